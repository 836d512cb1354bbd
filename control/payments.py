"""The payment provider the settings name, built once at the control plane's start."""

from __future__ import annotations

from billing.payments import PaymentProvider
from billing.payments.stripe_checkout import StripeProvider
from billing.payments.testpay import TestProvider
from gateway.contract import Settings


class PaymentsMisconfigured(ValueError):
    """A provider is named without what it needs: the control plane refuses to start."""


def public_url(settings: Settings) -> str | None:
    """Where customers' browsers reach this control plane."""
    return settings.public_url or settings.control_url


def provider_from(settings: Settings) -> PaymentProvider | None:
    """None when no provider is configured (orders are then refused with 503)."""
    name = settings.payment_provider
    if name is None:
        return None
    url = public_url(settings)
    if not url:
        raise PaymentsMisconfigured(
            f"TOKENGATE_PAYMENT_PROVIDER={name} needs TOKENGATE_PUBLIC_URL "
            "(where customers' browsers reach the control plane)"
        )
    if name == "test":
        return TestProvider(url)
    if settings.stripe_api_key is None or settings.stripe_webhook_secret is None:
        raise PaymentsMisconfigured(
            "TOKENGATE_PAYMENT_PROVIDER=stripe needs TOKENGATE_STRIPE_API_KEY and "
            "TOKENGATE_STRIPE_WEBHOOK_SECRET"
        )
    return StripeProvider(settings.stripe_api_key.get_secret_value(), url, settings.stripe_api_base)
