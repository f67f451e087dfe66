"""tools/bench/caption_encode.py: the caption stream is the cache's misses; both arms run."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "bench"))
import caption_encode  # noqa: E402


def test_stream_holds_each_caption_once_and_rows_are_written(tmp_path, capsys):
    cfg = caption_encode.aot_compile.load_config(
        str(caption_encode.ROOT / "configs" / "world.py:micro"), []
    )
    stream = caption_encode.caption_stream(cfg, steps=6, seed=0)
    flat = [t for step in stream for t in step]
    assert len(stream) == 6 and len(flat) == len(set(flat)) > 0  # a miss is encoded once
    assert stream == caption_encode.caption_stream(cfg, steps=6, seed=0)  # fixed by the seed
    out = tmp_path / "ce.json"
    caption_encode.main(["--config_arg=micro", "--steps=2", f"--json={out}"])
    result = json.loads(out.read_text())
    assert result["new_captions"] == sum(len(s) for s in stream[:2])
    before, now = result["rows"]
    assert before["speedup"] == 1.0 and before["seconds"] > 0 and now["seconds"] > 0
    # Never more tokens than every chunk at max_length; at least the valid ones.
    assert result["valid_tokens"] <= now["encoded_tokens"] <= before["encoded_tokens"]
    assert "chunks at their length" in capsys.readouterr().out
