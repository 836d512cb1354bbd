"""Process settings, read once from the environment (pydantic-settings) and passed in."""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a gateway process needs besides models.yaml itself.

    Environment names are the documented ones (``REDIS_URL``, ``DATABASE_URL``,
    ``TOKENGATE_ADMIN_KEY``, ``TOKENGATE_CONFIG``) plus ``TOKENGATE_*`` tuning knobs.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    database_url: str = Field(
        default="sqlite:///.tokengate/ledger.db", validation_alias="DATABASE_URL"
    )
    admin_key: SecretStr | None = Field(default=None, validation_alias="TOKENGATE_ADMIN_KEY")
    config_path: str = Field(default="models.yaml", validation_alias="TOKENGATE_CONFIG")
    # Where the control plane listens: the data plane forwards self-service (/v1/me*,
    # /v1/packages) there, and the admin CLI talks to it.
    control_url: str | None = Field(default=None, validation_alias="TOKENGATE_CONTROL_URL")

    # Commerce (control plane). Where customers' browsers reach the control plane (checkout
    # and console links; default: control_url), the payment provider ('test' pays from a
    # page of the control plane: for trials and demos only; 'stripe'; unset: no orders),
    # and how long an order may wait for its payment.
    public_url: str | None = Field(default=None, validation_alias="TOKENGATE_PUBLIC_URL")
    # The data plane's public base URL (no /v1): the console's snippets show it, and its
    # playground sends requests there, metered like any other (control/console/playground.py).
    data_url: str | None = Field(default=None, validation_alias="TOKENGATE_DATA_URL")
    payment_provider: str | None = Field(default=None, pattern="^(test|stripe)$",
                                         validation_alias="TOKENGATE_PAYMENT_PROVIDER")
    order_ttl_s: int = Field(default=3600, ge=1800, le=86_400, validation_alias="TOKENGATE_ORDER_TTL")
    stripe_api_key: SecretStr | None = Field(default=None, validation_alias="TOKENGATE_STRIPE_API_KEY")
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias="TOKENGATE_STRIPE_WEBHOOK_SECRET"
    )
    stripe_api_base: str | None = Field(default=None, validation_alias="TOKENGATE_STRIPE_API_BASE")

    # Who may tell the control plane a client's address (X-Forwarded-For): the peers in these
    # comma-separated CIDRs, normally the data plane on loopback (control/client_address.py).
    # Sign-ups from one client address per hour (each new organization gets the trial once):
    # what keeps a script from farming trial credits.
    signups_per_hour: int = Field(default=10, ge=1, validation_alias="TOKENGATE_SIGNUPS_PER_HOUR")
    trusted_proxies: str = Field(default="127.0.0.1/32,::1/128", validation_alias="TOKENGATE_TRUSTED_PROXIES")

    # Alerts (billing/alerts*.py): seconds between the billing worker's alert passes (0: none
    # in the worker), and whether a receiver may be a loopback, private or link-local address
    # (refused by default: a customer's URL must not reach the operator's own network).
    alert_interval_s: float = Field(default=60.0, ge=0, validation_alias="TOKENGATE_ALERT_INTERVAL")
    alerts_allow_private: bool = Field(default=False, validation_alias="TOKENGATE_ALERTS_ALLOW_PRIVATE")

    # Limits and timeouts of the relay (seconds unless named otherwise).
    max_body_bytes: int = Field(default=4 * 1024 * 1024, validation_alias="TOKENGATE_MAX_BODY_BYTES")
    connect_timeout: float = Field(default=3.0, validation_alias="TOKENGATE_CONNECT_TIMEOUT")
    # The upstream's response head must come within first_byte_timeout (vLLM sends it before
    # queueing and prefill); then the body may take as long as it keeps coming (idle_timeout
    # between two reads). A whole (non-streamed) answer is relayed from a stream too, so it
    # is not cut early; TOKENGATE_RESPONSE_TIMEOUT optionally bounds its total time (past it
    # the generation is stopped upstream and billed for what was generated).
    first_byte_timeout: float = Field(default=60.0, validation_alias="TOKENGATE_FIRST_BYTE_TIMEOUT")
    response_timeout_s: float | None = Field(
        default=None, gt=0, validation_alias="TOKENGATE_RESPONSE_TIMEOUT"
    )
    idle_timeout: float = Field(default=60.0, validation_alias="TOKENGATE_IDLE_TIMEOUT")
    upstream_attempts: int = Field(default=2, ge=1, le=5, validation_alias="TOKENGATE_UPSTREAM_ATTEMPTS")

    # The clients' side of the data plane (gateway/server.py): a request's line and headers
    # must arrive within header_timeout of the connection or of the request's first byte and
    # may take max_header_bytes (431 beyond); a body may pause at most body_timeout between
    # two reads (408, then closed); a worker holds at most max_connections client connections
    # (503 to the ones beyond, closed at once).
    header_timeout: float = Field(default=10.0, gt=0, validation_alias="TOKENGATE_HEADER_TIMEOUT")
    body_timeout: float = Field(default=30.0, gt=0, validation_alias="TOKENGATE_BODY_TIMEOUT")
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, validation_alias="TOKENGATE_MAX_HEADER_BYTES")
    max_connections: int = Field(default=4096, ge=1, validation_alias="TOKENGATE_MAX_CONNECTIONS")

    # Metering. A Redis that does not answer within redis_timeout is treated as down
    # (fail closed: 503); generous, so that a briefly starved host is not an outage.
    redis_timeout: float = Field(default=5.0, gt=0, validation_alias="TOKENGATE_REDIS_TIMEOUT")
    lease_seconds: float = Field(default=30.0, gt=0, validation_alias="TOKENGATE_LEASE_SECONDS")
    # A live request's progress reaches Redis at most this stale (only when it moved): what a
    # gateway SIGKILLed mid-stream is billed short of what its clients received.
    progress_seconds: float = Field(default=1.0, gt=0, validation_alias="TOKENGATE_PROGRESS_SECONDS")
    reaper_interval: float = Field(default=5.0, gt=0, validation_alias="TOKENGATE_REAPER_INTERVAL")
    auth_cache_seconds: float = Field(default=10.0, ge=0, validation_alias="TOKENGATE_AUTH_CACHE_SECONDS")
    # The secret behind each account's prefix-cache salt (gateway/cache_salt.py): the same in
    # every data-plane process. Unset: derived from TOKENGATE_ADMIN_KEY, else random per process.
    cache_salt_secret: SecretStr | None = Field(default=None, min_length=32,
                                                validation_alias="TOKENGATE_CACHE_SALT_SECRET")

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        """A bad CIDR fails at start, not at a customer's first redemption."""
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)
        return value
