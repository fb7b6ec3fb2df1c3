"""Scorer latency as Prometheus sees it, and the verdict "p99 above the bound, sustained,
since the promotion" that rolls ``champion`` back.

Pure: the standard library and ``prometheus_client.parser`` (a text-format parser); only
``scrape_metrics`` / ``scrape_pods`` do I/O (HTTP GET with the metrics token).

The scorer (``cli.scorer_app``) exports ``REQUEST_SECONDS``, a histogram of request
latency labelled ``route``, ``status`` and ``model_version`` (the version that answered),
with the bucket edges ``LATENCY_BUCKETS``, and ``process_start_time_seconds``. A monitor
scrapes every scorer pod once per round (all pods of a round carry the same ``at``),
keeps the ``Scrape`` records of the last window (``scrapes_to_json`` for a sensor cursor),
and asks ``judge_latency``; ``monitor_tick`` does both for one tick under a
``LatencyPolicy`` (bound, window, quantile, minimum traffic).

The verdict, for the version ``v`` promoted at ``promoted_at``:

* Only successful (2xx) ``POST /score`` requests answered by ``v`` count: the version
  label makes the attribution exact even while pods swap models.
* Per pod, consecutive scrapes give the requests of the interval (the difference of the
  cumulative buckets); a pod that restarted (its ``process_start_time_seconds`` moved or a
  count went down) contributes its counts since the restart; a pod's first scrape counts
  from zero only if its process started after the promotion. The pods' intervals are
  summed per round.
* "p99 above the bound" in a round means more than 1% (``1 - quantile``) of its requests
  were slower than ``bound_s``. ``bound_s`` must be a bucket edge, so this count is exact,
  not interpolated.
* Sustained: the last ``window_s`` seconds lie wholly after the promotion, at least
  ``min_rounds`` rounds in them had ``min_requests`` requests or more, and every such
  round was above the bound. Quieter rounds are no evidence either way.

The p99 quoted in the reason is Prometheus' ``histogram_quantile`` estimate (linear
interpolation inside the bucket) over the whole window; the decision does not use it.
"""

from __future__ import annotations

import bisect
import json
import math
import socket
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

REQUEST_SECONDS = "quant_scorer_request_duration_seconds"
MODEL_VERSION_GAUGE = "quant_scorer_model_version"
SCORE_ROUTE = "/score"
# Bucket edges (seconds): fine around the millisecond targets, so that any bound a desk
# would set (1, 2, 3, 4, 5, 7.5, 10, 15, 25 ms...) is an edge and its share is exact.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts: ``counts[i]`` requests took at most ``bounds[i]`` seconds;
    the last bound is +inf (the total)."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.bounds or self.bounds[-1] != math.inf or len(self.bounds) != len(self.counts):
            raise ValueError("a histogram needs cumulative counts per bound, ending at +Inf")
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"histogram bounds are not ascending: {self.bounds}")

    @classmethod
    def zero(cls, bounds: Sequence[float]) -> Histogram:
        return cls(tuple(bounds), (0.0,) * len(bounds))

    @property
    def total(self) -> float:
        return self.counts[-1]

    def count_le(self, bound: float) -> float:
        """Requests of at most ``bound`` seconds; ``bound`` must be one of the edges."""
        i = bisect.bisect_left(self.bounds, bound)
        if i == len(self.bounds) or not math.isclose(self.bounds[i], bound, rel_tol=1e-9):
            edges = ", ".join(f"{b * 1000:g}" for b in self.bounds[:-1])
            raise ValueError(
                f"latency bound {bound * 1000:g} ms is not a bucket edge of the scorer's "
                f"histogram (edges, ms: {edges}); choose one of them"
            )
        return self.counts[i]

    def _check_same(self, other: Histogram) -> None:
        if self.bounds != other.bounds:
            raise ValueError("histograms with different bucket edges cannot be combined")

    def __add__(self, other: Histogram) -> Histogram:
        self._check_same(other)
        return Histogram(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    def __sub__(self, other: Histogram) -> Histogram:
        self._check_same(other)
        return Histogram(self.bounds, tuple(a - b for a, b in zip(self.counts, other.counts, strict=True)))

    def decreased_from(self, earlier: Histogram) -> bool:
        """True if any count went down since ``earlier`` (a counter reset)."""
        return self.bounds != earlier.bounds or any(
            a < b for a, b in zip(self.counts, earlier.counts, strict=True)
        )

    def quantile(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear interpolation inside the bucket holding
        rank q * total (the lowest bucket from 0); NaN for an empty histogram; the highest
        finite edge when the rank falls in the +Inf bucket."""
        total = self.total
        if total <= 0:
            return math.nan
        rank = q * total
        i = bisect.bisect_left(self.counts, rank)
        if i >= len(self.bounds) - 1:
            return self.bounds[-2]
        lo_bound = self.bounds[i - 1] if i > 0 else 0.0
        lo_count = self.counts[i - 1] if i > 0 else 0.0
        width = self.counts[i] - lo_count
        if width <= 0:
            return self.bounds[i]
        return lo_bound + (self.bounds[i] - lo_bound) * (rank - lo_count) / width


@dataclass(frozen=True)
class Scrape:
    """One /metrics scrape of one scorer pod."""

    at: float  # Unix seconds of the scrape round (shared by every pod of the round)
    instance: str  # the pod (address:port)
    started_at: float | None  # process_start_time_seconds
    served_version: int | None  # the quant_scorer_model_version gauge
    # 2xx POST /score latency by the model version that answered
    score_latency: Mapping[int, Histogram] = field(default_factory=dict)


def parse_metrics(text: str, instance: str, at: float) -> Scrape:
    """A ``Scrape`` from the Prometheus text of a scorer's /metrics."""
    buckets: dict[int, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    started = served = None
    for family in text_string_to_metric_families(text):
        if family.name == REQUEST_SECONDS:
            for s in family.samples:
                if (s.name == REQUEST_SECONDS + "_bucket" and s.labels.get("route") == SCORE_ROUTE
                        and s.labels.get("status", "").startswith("2")):
                    version = int(s.labels["model_version"])
                    buckets[version][float(s.labels["le"])] += s.value  # summed over 2xx statuses
        elif family.name == "process_start_time_seconds" and family.samples:
            started = family.samples[0].value
        elif family.name == MODEL_VERSION_GAUGE and family.samples:
            served = int(family.samples[0].value)
    hists = {}
    for version, by_le in buckets.items():
        bounds = tuple(sorted(by_le))
        hists[version] = Histogram(bounds, tuple(by_le[b] for b in bounds))
    return Scrape(at, instance, started, served, hists)


def scrape_metrics(url: str, token: str, timeout: float = 5.0) -> str:
    """GET ``url`` (a scorer's /metrics) with the metrics bearer token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def scrape_pods(host: str, port: int, token: str, at: float, timeout: float = 5.0,
                path: str = "/metrics") -> list[Scrape]:
    """Scrape every scorer pod behind ``host`` (the chart's headless Service resolves to
    one address per ready pod) in one round stamped ``at``. A pod that does not answer is
    left out of the round (its next scrape counts from its last good one)."""
    addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
    out = []
    for address in addresses:
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        try:
            text = scrape_metrics(f"http://{netloc}{path}", token, timeout)
        except OSError:
            continue
        out.append(parse_metrics(text, netloc, at))
    return out


# -- the sensor's cursor -------------------------------------------------------------------


def scrapes_to_json(scrapes: Iterable[Scrape]) -> list[dict]:
    return [
        {"at": s.at, "instance": s.instance, "started_at": s.started_at,
         "served_version": s.served_version,
         "score_latency": {str(v): {"bounds": [str(b) for b in h.bounds], "counts": list(h.counts)}
                           for v, h in s.score_latency.items()}}
        for s in scrapes
    ]


def scrapes_from_json(data: Iterable[Mapping]) -> list[Scrape]:
    return [
        Scrape(d["at"], d["instance"], d["started_at"], d["served_version"],
               {int(v): Histogram(tuple(float(b) for b in h["bounds"]), tuple(h["counts"]))
                for v, h in d["score_latency"].items()})
        for d in data
    ]


def keep_recent(scrapes: Iterable[Scrape], since: float) -> list[Scrape]:
    """The scrapes to keep in a cursor: those at or after ``since``, plus each pod's last
    one before it (the baseline of its next interval)."""
    scrapes = sorted(scrapes, key=lambda s: s.at)
    last_before: dict[str, Scrape] = {}
    for s in scrapes:
        if s.at < since:
            last_before[s.instance] = s
    return sorted([*last_before.values(), *(s for s in scrapes if s.at >= since)], key=lambda s: s.at)


def dumps(scrapes: Iterable[Scrape]) -> str:
    return json.dumps(scrapes_to_json(scrapes), sort_keys=True)


def loads(text: str) -> list[Scrape]:
    return scrapes_from_json(json.loads(text)) if text else []


# -- the verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    at: float
    latency: Histogram  # requests of version v in the interval that ended at ``at``


def rounds_for_version(scrapes: Iterable[Scrape], version: int, promoted_at: float) -> list[Round]:
    """Per round, the summed per-pod interval histograms of ``version`` (see the module
    docstring for restarts and first scrapes)."""
    by_pod: dict[str, list[Scrape]] = defaultdict(list)
    for s in scrapes:
        by_pod[s.instance].append(s)
    per_round: dict[float, Histogram] = {}
    for pod_scrapes in by_pod.values():
        pod_scrapes.sort(key=lambda s: s.at)
        previous: Scrape | None = None
        for s in pod_scrapes:
            now = s.score_latency.get(version)
            if previous is None:
                started_after = s.started_at is not None and s.started_at >= promoted_at
                delta = now if (now is not None and started_after) else None
            else:
                before = previous.score_latency.get(version)
                restarted = (s.started_at is not None and previous.started_at is not None
                             and s.started_at != previous.started_at)
                if now is None:
                    delta = None
                elif before is None or restarted or now.decreased_from(before):
                    delta = now
                else:
                    delta = now - before
            previous = s
            if delta is not None:
                per_round[s.at] = per_round[s.at] + delta if s.at in per_round else delta
    return [Round(at, h) for at, h in sorted(per_round.items())]


@dataclass(frozen=True)
class LatencyVerdict:
    breach: bool
    reason: str
    model_version: int
    rounds: int  # rounds in the window with enough requests
    requests: float  # requests of the version in the window
    share_over: float  # of those, the share slower than the bound (NaN without requests)
    p99_s: float  # histogram_quantile estimate over the window (NaN without requests)


def judge_latency(
    scrapes: Iterable[Scrape],
    model_version: int,
    promoted_at: float,
    now: float,
    bound_s: float,
    window_s: float,
    quantile: float = 0.99,
    min_requests: int = 50,
    min_rounds: int = 3,
) -> LatencyVerdict:
    """Has the ``quantile`` latency of ``model_version``'s scoring stayed above ``bound_s``
    for the last ``window_s`` seconds, all after its promotion? (See the module docstring.)"""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile={quantile} must be in (0, 1)")
    if window_s <= 0 or min_rounds < 1 or min_requests < 1:
        raise ValueError("window_s, min_rounds and min_requests must be positive")
    tail = 1.0 - quantile
    q_name = f"p{quantile * 100:g}"
    bound_ms = f"{bound_s * 1000:g} ms"

    def verdict(breach: bool, reason: str, rounds: int = 0, window: Histogram | None = None) -> LatencyVerdict:
        total = window.total if window is not None else 0.0
        share = (total - window.count_le(bound_s)) / total if total else math.nan
        p = window.quantile(quantile) if window is not None else math.nan
        return LatencyVerdict(breach, reason, model_version, rounds, total, share, p)

    age = now - promoted_at
    if age < window_s:
        return verdict(False, f"v{model_version} was promoted {age:.0f} s ago, less than the "
                              f"{window_s:g} s window")
    start = now - window_s
    rounds = [r for r in rounds_for_version(scrapes, model_version, promoted_at) if start < r.at <= now]
    if not rounds:
        return verdict(False, f"no scrape of v{model_version} in the last {window_s:g} s")
    window = rounds[0].latency
    for r in rounds[1:]:
        window = window + r.latency
    window.count_le(bound_s)  # a bound that is not an edge fails here, whatever the traffic
    busy = [r for r in rounds if r.latency.total >= min_requests]
    over = [r for r in busy if r.latency.total - r.latency.count_le(bound_s) > tail * r.latency.total]
    summary = (f"{len(over)} of {len(busy)} rounds with >= {min_requests} requests over "
               f"{window_s:g} s had more than {tail:.2%} of requests slower than {bound_ms}")
    if len(busy) < min_rounds:
        return verdict(False, f"v{model_version}: too little traffic to judge: {summary} "
                              f"(need {min_rounds} rounds)", len(busy), window)
    p = window.quantile(quantile)
    if len(over) < len(busy):
        return verdict(False, f"v{model_version}: {q_name} not sustained above {bound_ms}: {summary}",
                       len(busy), window)
    return verdict(True, f"scorer latency: v{model_version} {q_name} ~{p * 1000:.1f} ms above "
                         f"{bound_ms} for {window_s:g} s since its promotion ({summary})",
                   len(busy), window)


# -- one monitor tick ----------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyPolicy:
    """The configured alarm: ``quantile`` latency above ``bound_s`` (a bucket edge) for
    ``window_s`` seconds after a promotion, judged on rounds of ``min_requests`` or more
    requests, at least ``min_rounds`` of them."""

    bound_s: float = 0.005
    window_s: float = 300.0
    quantile: float = 0.99
    min_requests: int = 50
    min_rounds: int = 3

    def __post_init__(self) -> None:
        Histogram.zero((*LATENCY_BUCKETS, math.inf)).count_le(self.bound_s)  # an edge, or fail


def monitor_tick(cursor: Sequence[Mapping], new_scrapes: Iterable[Scrape], model_version: int,
                 promoted_at: float, now: float,
                 policy: LatencyPolicy = LatencyPolicy()) -> tuple[LatencyVerdict, list[dict]]:
    """One tick of a latency monitor: the verdict on the kept scrapes plus this round's,
    and the scrapes to keep for the next tick (JSON-able, for a sensor cursor)."""
    scrapes = [*scrapes_from_json(cursor), *new_scrapes]
    verdict = judge_latency(scrapes, model_version, promoted_at, now, policy.bound_s,
                            policy.window_s, policy.quantile, policy.min_requests,
                            policy.min_rounds)
    return verdict, scrapes_to_json(keep_recent(scrapes, now - policy.window_s))
