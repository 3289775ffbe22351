"""The server's counters, in Prometheus' text exposition format (`GET /metrics`).

Written by the engine thread, read by the HTTP thread: each update is a few attribute writes under
one lock, so a scrape sees a consistent picture.
"""

from __future__ import annotations

import threading
import time
from collections import deque

# seconds; the histograms' upper bounds (Prometheus `le`)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# the window over which tokens/s is measured
RATE_WINDOW_S = 10.0


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, count in zip((*self.bounds, "+Inf"), self.counts):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"{name}_sum {self.total:.6f}", f"{name}_count {cumulative}"]
        return lines


class Metrics:
    """Requests running and waiting, tokens generated (and per second over the last
    `RATE_WINDOW_S`), time to first token and per-token latency, KV blocks in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = self.waiting = 0
        self.kv_used = self.kv_total = 0
        self.tokens = 0
        self.finished_by_reason: dict[str, int] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.per_token = Histogram(TOKEN_BUCKETS)
        self._recent: deque[float] = deque()

    def set_queue(self, running: int, waiting: int) -> None:
        with self._lock:
            self.running, self.waiting = running, waiting

    def set_kv(self, used: int, total: int) -> None:
        with self._lock:
            self.kv_used, self.kv_total = used, total

    def token(self, latency: float, first: bool) -> None:
        """A token was produced `latency` seconds after the previous one (or the request's arrival)."""
        now = time.monotonic()
        with self._lock:
            self.tokens += 1
            (self.ttft if first else self.per_token).observe(latency)
            self._recent.append(now)
            self._trim(now)

    def finished(self, reason: str) -> None:
        with self._lock:
            self.finished_by_reason[reason] = self.finished_by_reason.get(reason, 0) + 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def render(self) -> str:
        with self._lock:
            self._trim(time.monotonic())
            rate = len(self._recent) / RATE_WINDOW_S
            lines = [
                "# TYPE lamina_requests_running gauge", f"lamina_requests_running {self.running}",
                "# TYPE lamina_requests_waiting gauge", f"lamina_requests_waiting {self.waiting}",
                "# TYPE lamina_generated_tokens_total counter", f"lamina_generated_tokens_total {self.tokens}",
                "# TYPE lamina_generation_tokens_per_second gauge",
                f"lamina_generation_tokens_per_second {rate:.3f}",
                "# TYPE lamina_kv_blocks_used gauge", f"lamina_kv_blocks_used {self.kv_used}",
                "# TYPE lamina_kv_blocks_total gauge", f"lamina_kv_blocks_total {self.kv_total}",
                "# TYPE lamina_kv_cache_usage_ratio gauge",
                f"lamina_kv_cache_usage_ratio {self.kv_used / self.kv_total if self.kv_total else 0.0:.6f}",
                "# TYPE lamina_requests_finished_total counter",
            ]
            lines += [f'lamina_requests_finished_total{{reason="{reason}"}} {count}'
                      for reason, count in sorted(self.finished_by_reason.items())]
            lines.append("# TYPE lamina_time_to_first_token_seconds histogram")
            lines += self.ttft.lines("lamina_time_to_first_token_seconds")
            lines.append("# TYPE lamina_time_per_output_token_seconds histogram")
            lines += self.per_token.lines("lamina_time_per_output_token_seconds")
        return "\n".join(lines) + "\n"
