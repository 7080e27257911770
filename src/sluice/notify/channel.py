"""The interface every delivery channel implements (one small module per channel)."""

from __future__ import annotations

from typing import Optional, Protocol

from ..state.models import SystemSettings, UserPreferences
from .destinations import DestinationPolicy
from .message import Notice


class DeliveryError(Exception):
    """Delivery failed; the message says why (it is kept as the notification's last error)."""


class Channel(Protocol):
    name: str

    def destination(self, prefs: Optional[UserPreferences], system: SystemSettings) -> Optional[str]:
        """Where this user's notifications go on this channel; None when it is off for them."""

    def check(self, prefs: UserPreferences, policy: DestinationPolicy) -> None:
        """Raise ``DestinationRefused`` if the user's destination is not one the policy allows
        (a channel whose destination the user does not choose checks nothing)."""

    def deliver(self, notices: list[Notice], prefs: UserPreferences, system: SystemSettings) -> None:
        """Send the notices (one, or several as a digest where the channel has one); raise
        ``DeliveryError`` on failure."""
