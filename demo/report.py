"""What every demo trainer does last: keep its result beside the weights and say it in one line."""
from __future__ import annotations

import json
from pathlib import Path


def save_result(out: str | Path, result: dict, by_kind: dict[str, float] | None = None) -> dict:
    """Write ``training_result.json`` into ``out`` and print the test accuracy (per question kind if given)."""
    (Path(out) / "training_result.json").write_text(json.dumps(result, indent=2))
    kinds = f" ({', '.join(f'{k} {v:.3f}' for k, v in by_kind.items())})" if by_kind else ""
    print(f"test accuracy {result['test_accuracy']:.4f} on {result['test_questions']} questions{kinds}; "
          f"wall time {result['wall_seconds']:.0f} s")
    return result
