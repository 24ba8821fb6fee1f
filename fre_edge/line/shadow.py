"""A shadow bundle: a second bundle (a refit, say) scores the same parts beside the live one. Only the live
one's verdicts reach the sinks; the page, ``/status`` and a report (``JOURNAL/shadow.jsonl``, one line per
part on which the two disagree) show where they differ and both reject rates, so the engineer promotes the
new bundle (``POST /promote``) when satisfied: the two swap between two inference calls, so every part is
scored by exactly one live bundle, and the old one stays as the shadow (a promotion can be undone the same
way).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path

from ..errors import FreEdgeError


class Shadow:
    def __init__(self, detector, version: str, bundle: str, report: Path):
        self.detector, self.version, self.bundle = detector, version, bundle
        self.report = Path(report)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.parts = self.rejects = self.live_rejects = self.disagreements = 0
        self.recent = deque(maxlen=50)

    @staticmethod
    def check(live, shadow, bundle: str) -> None:
        if tuple(live.input_size) != tuple(shadow.input_size) or (live.tiling is None) != (shadow.tiling is None) or (
                live.tiling is not None and live.tiling.to_json() != shadow.tiling.to_json()):
            raise FreEdgeError(f"--shadow {bundle}: it takes other inputs than the live bundle (input size or "
                               f"tiles); fit it at the live bundle's size to compare them on the same parts")

    def compare(self, record: dict, pred) -> None:
        """One part: the live verdict (``record``) against the shadow's prediction."""
        verdict = "anomalous" if pred.anomalous else "good"
        with self.lock:
            self.parts += 1
            self.rejects += verdict != "good"
            self.live_rejects += record["verdict"] != "good"
            if verdict != record["verdict"]:
                self.disagreements += 1
                row = {"seq": record["seq"], "id": record["id"], "part": record["part"], "source": record["source"],
                       "live": {"verdict": record["verdict"], "score": record["score"],
                                "bundle_version": record["bundle_version"]},
                       "shadow": {"verdict": verdict, "score": pred.score, "threshold": self.detector.image_threshold,
                                  "bundle_version": self.version}}
                self.recent.append(row)
                with open(self.report, "a") as f:
                    f.write(json.dumps(row) + "\n")

    def status(self) -> dict:
        with self.lock:
            return {"bundle": self.bundle, "bundle_version": self.version, "parts": self.parts,
                    "reject_rate": self.rejects / self.parts if self.parts else None,
                    "live_reject_rate": self.live_rejects / self.parts if self.parts else None,
                    "disagreements": self.disagreements, "recent_disagreements": list(self.recent),
                    "report": str(self.report)}
