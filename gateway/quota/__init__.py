"""Quota: admission and settlement of requests against prepaid credits, atomically in Redis.

See :mod:`gateway.quota.store` for the lifecycle of a reservation.
"""

from gateway.quota.admission import Admission, RateInfo
from gateway.quota.pricing import cost, price_to_pm
from gateway.quota.reservation import Reservation
from gateway.quota.store import QuotaStore

__all__ = ["Admission", "QuotaStore", "RateInfo", "Reservation", "cost", "price_to_pm"]
