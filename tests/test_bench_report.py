"""tools/bench/report.py: rows measured one by one, a failing row kept, the budget, ratios."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "bench"))
import report  # noqa: E402


def test_rows_keep_failures_and_the_json_is_written_after_each(tmp_path):
    out, path = {"rows": []}, str(tmp_path / "r.json")
    seen = []

    def ok(step_s):
        def run():
            seen.append(json.loads((tmp_path / "r.json").read_text()) if seen else None)
            return {"step_s": step_s}

        return run

    def fails():
        raise RuntimeError("no cuDNN here")

    report.measure_rows(out, path, [({"batch": 1}, ok(2.0)), ({"batch": 2}, fails),
                                    ({"batch": 3}, ok(1.0))])  # fmt: skip
    assert out["rows"] == [{"batch": 1, "step_s": 2.0},
                           {"batch": 2, "error": "RuntimeError: no cuDNN here"},
                           {"batch": 3, "step_s": 1.0}]  # fmt: skip
    assert len(seen[1]["rows"]) == 2  # the third row ran after the first two were on disk
    report.ratios_to_first(out["rows"], "step_s", "vs_first")
    assert [r.get("vs_first") for r in out["rows"]] == [1.0, None, 0.5]


def test_rows_after_the_budget_are_skipped(tmp_path):
    out = {"rows": []}

    def slow():
        time.sleep(0.1)
        return {"step_s": 0.1}

    report.measure_rows(out, str(tmp_path / "r.json"), [({"batch": b}, slow) for b in (1, 2)],
                        budget_s=0.05)  # fmt: skip
    assert [r.get("error") for r in out["rows"]] == [None, "budget"]
