"""Envoy's outlier ejection for one destination (cluster), as istiod configures it from a
DestinationRule's `outlierDetection`, driven by explicit times: no clock inside.

    detector = OutlierDetector(settings, endpoints)
    detector.record(endpoint, now, status=503)          # or failure="connect-failure"
    detector.sweep(now)                                  # every settings.interval seconds
    endpoints, panic = detector.load_balancing_set(endpoints)
    panic_set(endpoints, unhealthy, panic_threshold(rule_outlier_detection))   # health from elsewhere

What Envoy does, and so meshcore:
- consecutive 5xx (the rule's consecutive5xxErrors, Envoy's default 5 when left out)
  and, only when the rule sets consecutiveGatewayErrors, consecutive 502/503/504 eject an
  endpoint the moment the count is reached; any other answer resets the counts. With
  outlierDetectionHttpErrorCodes, only those codes count as errors.
- a failure without an answer (connect failure, reset, timeout) counts as a 503 (504
  for a timeout), unless splitExternalLocalOriginErrors: then it counts toward
  consecutiveLocalOriginFailures only, and an answer resets that count.
- an ejection is refused when it would take the ejected share above
  maxEjectionPercent (Envoy's default 10 %: with fewer than 10 endpoints, none is
  ejected unless the rule raises it).
- an ejected endpoint returns at the first sweep after min(baseEjectionTime × its
  ejection multiplier, max(300 s, baseEjectionTime)); the multiplier grows with each
  ejection and shrinks by one at each sweep that finds it healthy an interval after
  its return.
- panic: when the healthy share is under the panic threshold, load balancing ignores
  ejections and uses every endpoint. istiod sets the threshold to minHealthPercent
  (default 0: never panic; then with every endpoint ejected there is none to choose
  and the request is answered 503, no healthy upstream). Envoy's own default of 50 %
  applies only to clusters without outlierDetection, where nothing is ejected.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from meshcore.traffic.istio_model import OutlierDetection

OVERPROVISIONING_FACTOR = 1.4          # Envoy's default: 71.5 % healthy counts as fully available
ENVOY_PANIC_THRESHOLD = 50.0
GATEWAY_ERRORS = (502, 503, 504)
_FAILURE_STATUS = {"connect-failure": 503, "reset": 503, "refused-stream": 503, "timeout": 504}


@dataclass(slots=True)
class _Monitor:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    ejected_at: float | None = None
    multiplier: int = 0                  # Envoy's eject time backoff
    returned_at: float | None = None

    def reset_counts(self) -> None:
        self.consecutive_5xx = self.consecutive_gateway = self.consecutive_local = 0


class OutlierDetector:
    def __init__(self, settings: OutlierDetection, endpoints: Iterable[Hashable] = ()) -> None:
        self.settings = settings
        self._monitors: dict[Hashable, _Monitor] = {e: _Monitor() for e in endpoints}

    # -- endpoint set -------------------------------------------------------------------

    def update_endpoints(self, endpoints: Iterable[Hashable]) -> None:
        """The destination's endpoints changed: new ones start clean, gone ones are forgotten."""
        self._monitors = {e: self._monitors.get(e) or _Monitor() for e in endpoints}

    def ejected(self) -> frozenset:
        return frozenset(e for e, m in self._monitors.items() if m.ejected_at is not None)

    def is_ejected(self, endpoint: Hashable) -> bool:
        m = self._monitors.get(endpoint)
        return m is not None and m.ejected_at is not None

    def ejection_count(self, endpoint: Hashable) -> int:
        """The multiplier of the endpoint's next or current ejection time."""
        return self._monitors[endpoint].multiplier

    # -- results ------------------------------------------------------------------------

    def _is_error(self, status: int) -> bool:
        codes = self.settings.error_codes
        return status in codes if codes else 500 <= status <= 599

    def record(self, endpoint: Hashable, now: float, *, status: int | None = None,
               failure: str | None = None) -> bool:
        """One attempt's outcome at `endpoint`: the answer's `status`, or a `failure`
        without one (connect-failure, reset, refused-stream, timeout). True when this
        ejected the endpoint."""
        m = self._monitors.get(endpoint)
        if m is None:
            return False
        s = self.settings
        if failure is not None:
            if failure not in _FAILURE_STATUS:
                raise ValueError(f"{failure!r} is not one of {', '.join(_FAILURE_STATUS)}")
            if s.split_external_local_origin_errors:
                m.consecutive_local += 1
                return (s.consecutive_local_origin_failures > 0
                        and m.consecutive_local == s.consecutive_local_origin_failures
                        and self._consecutive(m, now, "consecutive_local"))
            status = _FAILURE_STATUS[failure]
        elif status is None:
            raise ValueError("record needs a status or a failure")
        elif s.split_external_local_origin_errors:
            m.consecutive_local = 0                        # the connection worked
        if not self._is_error(status):
            m.consecutive_5xx = m.consecutive_gateway = 0
            return False
        if status in GATEWAY_ERRORS:
            m.consecutive_gateway += 1
        else:
            m.consecutive_gateway = 0
        m.consecutive_5xx += 1
        if s.consecutive_gateway_errors > 0 and m.consecutive_gateway == s.consecutive_gateway_errors:
            if self._consecutive(m, now, "consecutive_gateway"):
                return True
        if s.consecutive_5xx > 0 and m.consecutive_5xx == s.consecutive_5xx:
            return self._consecutive(m, now, "consecutive_5xx")
        return False

    def _consecutive(self, m: _Monitor, now: float, count: str) -> bool:
        """A count reached its threshold: eject if allowed. An endpoint already ejected
        keeps counting (Envoy ignores the event); otherwise the count that fired starts
        over whether or not max_ejection_percent let the ejection happen."""
        if m.ejected_at is not None:
            return False
        setattr(m, count, 0)
        active = sum(1 for x in self._monitors.values() if x.ejected_at is not None)
        if 100.0 * (active + 1) / len(self._monitors) > self.settings.max_ejection_percent:
            return False
        s = self.settings
        if m.multiplier * s.base_ejection_time < self._max_ejection_time() + s.base_ejection_time:
            m.multiplier += 1
        m.ejected_at = now
        return True

    def _max_ejection_time(self) -> float:
        return max(self.settings.max_ejection_time, self.settings.base_ejection_time)

    def ejection_time(self, endpoint: Hashable) -> float:
        """How long the endpoint's current (or next) ejection lasts."""
        m = self._monitors[endpoint]
        return min(self.settings.base_ejection_time * max(m.multiplier, 1), self._max_ejection_time())

    # -- the interval timer -------------------------------------------------------------

    def sweep(self, now: float) -> list:
        """Envoy's interval sweep: endpoints whose ejection time has passed return (their
        counts start over); healthy endpoints an interval past their return shrink their
        multiplier. Returns the endpoints that came back."""
        back = []
        for e, m in self._monitors.items():
            if m.ejected_at is None:
                if m.returned_at is not None and m.multiplier > 0 and now - m.returned_at >= self.settings.interval:
                    m.multiplier -= 1
                continue
            if now - m.ejected_at >= self.ejection_time(e):
                m.ejected_at = None
                m.returned_at = now
                m.reset_counts()
                back.append(e)
        return back

    # -- what load balancing sees ----------------------------------------------------------

    def load_balancing_set(self, endpoints: Sequence[Hashable]) -> tuple[list, bool]:
        """The endpoints to balance over and whether the destination is in panic."""
        ejected = self.ejected()
        return panic_set(endpoints, ejected, self.settings.min_health_percent)


def panic_threshold(settings: OutlierDetection | None) -> float:
    """The healthy panic threshold Envoy runs with for a destination: minHealthPercent
    when the DestinationRule has outlierDetection (istiod sets it, 0 by default),
    Envoy's 50 % otherwise."""
    return ENVOY_PANIC_THRESHOLD if settings is None else float(settings.min_health_percent)


def panic_set(endpoints: Sequence[Hashable], unhealthy: Iterable[Hashable], panic_threshold: float,
              overprovisioning: float = OVERPROVISIONING_FACTOR) -> tuple[list, bool]:
    """Envoy's panic rule for one priority level: with the healthy share times the
    overprovisioning factor at 100 % or more, only healthy endpoints; otherwise, when
    the healthy share is under `panic_threshold` (percent; 0 turns panic off), every
    endpoint, ejected or not. Returns (endpoints to balance over, panic)."""
    unhealthy = set(unhealthy)
    healthy = [e for e in endpoints if e not in unhealthy]
    if not endpoints:
        return [], False
    healthy_percent = 100.0 * len(healthy) / len(endpoints)
    fully_available = min(100.0, healthy_percent * overprovisioning) >= 100.0
    if not fully_available and healthy_percent < panic_threshold:
        return list(endpoints), True
    return healthy, False
