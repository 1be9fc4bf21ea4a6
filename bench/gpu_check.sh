#!/usr/bin/env bash
# GPU check of distillation throughput, sized for a few minutes on one CUDA GPU:
#   an r100 teacher (random weights, BatchNorm statistics calibrated so its embeddings are finite)
#   -> an mbf student at 112 px on a RecordIO set of synthetic faces; the teacher-feature cache is
#   built on the GPU (AMP fp16, channels_last), then STEPS AMP steps of SRD distillation and the
#   same steps of the plain student (ArcFace head alone). Prints cache build images/s, distill
#   images/s and plain images/s (median of the logged windows after the first).
#
# Usage (from the repository root, on any CUDA machine):
#   bash bench/gpu_check.sh [OUT_DIR]
# Knobs (environment): IDS=2000 PER_ID=10 STEPS=300 BATCH=128 WORKERS=8 TEACHER=r100 STUDENT=mbf
#   SIZE=112 DEVICE=cuda PY=.venv/bin/python. DEVICE=cpu with tiny values is a smoke test only
#   (e.g. DEVICE=cpu IDS=8 PER_ID=2 STEPS=4 BATCH=8 TEACHER=r18 SIZE=32 WORKERS=0).
set -euo pipefail

PY=${PY:-.venv/bin/python}
OUT=${1:-/tmp/facekd_gpu_check}
IDS=${IDS:-2000}
PER_ID=${PER_ID:-10}
STEPS=${STEPS:-300}
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-8}
TEACHER=${TEACHER:-r100}
STUDENT=${STUDENT:-mbf}
SIZE=${SIZE:-112}
DEVICE=${DEVICE:-cuda}
LOG_EVERY=$(( STEPS / 6 > 0 ? STEPS / 6 : 1 ))
export FACEKD_NO_PROGRESS=1

rm -rf "$OUT/distill" "$OUT/plain"
mkdir -p "$OUT"

echo "== data and teacher weights ($IDS identities x $PER_ID images, ${SIZE} px; $TEACHER, random) =="
"$PY" - "$OUT" "$IDS" "$PER_ID" "$SIZE" "$TEACHER" "$DEVICE" <<'EOF'
import sys
from multiprocessing import get_context
from pathlib import Path

import torch

out, ids, per_id, size, teacher, device = Path(sys.argv[1]), *map(int, sys.argv[2:5]), sys.argv[5], sys.argv[6]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible (DEVICE=cpu runs a smoke test only)")


def render(first: int) -> list[bytes]:
    from facekd.data.image_codec import encode_image
    from facekd.data.synthetic import SyntheticFaceDataset

    faces = SyntheticFaceDataset(min(64, ids - first), per_id, size=size, seed=0, first_identity=first)
    return [encode_image(faces.read(i)[0], ".jpg") for i in range(len(faces))]


if not (out / "rec" / "train.rec").is_file():
    from facekd.data.recordio import FaceRecordWriter

    with get_context("fork").Pool() as pool, FaceRecordWriter(out / "rec", num_classes=ids,
                                                               image_size=(size, size)) as writer:
        for k, images in enumerate(pool.imap(render, range(0, ids, 64))):
            for j, data in enumerate(images):
                writer.add(data, k * 64 + j // per_id)

from facekd.models.registry import build_backbone
from facekd.models.weights import save_weights_file

torch.manual_seed(0)
net = build_backbone(teacher, input_size=size, embedding_size=512).to(device)
for m in net.modules():  # calibrate BatchNorm statistics on random inputs: finite, float16-safe embeddings
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.reset_running_stats()
        m.momentum = None
net.train()
with torch.no_grad():
    for _ in range(20):
        net(torch.randn(32, 3, size, size, device=device).clamp_(-1, 1))
save_weights_file({k: v.cpu() for k, v in net.state_dict().items()}, out / "teacher.pth")
EOF

COMMON=(--data "$OUT/rec" --input-size "$SIZE" --batch-size "$BATCH" --max-steps "$STEPS" --workers "$WORKERS"
        --device "$DEVICE" --amp auto --channels-last --log-every "$LOG_EVERY" --ckpt-every 1000000 --val-pairs 0
        --no-tensorboard --lr 0.1)

echo "== distillation: cache on $DEVICE, then $STEPS steps =="
"$PY" -m facekd.pipelines.distill "${COMMON[@]}" --teacher "$TEACHER" --teacher-weights "$OUT/teacher.pth" \
    --student "$STUDENT" --out "$OUT/distill"
echo "== plain student: $STEPS steps =="
"$PY" -m facekd.pipelines.train "${COMMON[@]}" --backbone "$STUDENT" --out "$OUT/plain"

"$PY" - "$OUT" <<'EOF'
import json
import statistics
import sys
from pathlib import Path

import torch

from facekd.engine.metrics_log import read_metrics

out = Path(sys.argv[1])
manifest = json.loads((out / "distill" / "teacher_cache" / "labeled" / "manifest.json").read_text())
rows = manifest["parts"][-1][1]
build = rows / (manifest["finished"] - manifest["created"])


def rate(run: str) -> float:
    values = [r["images_per_s"] for r in read_metrics(out / run) if "images_per_s" in r]
    return statistics.median(values[1:] if len(values) > 1 else values)


distill, plain = rate("distill"), rate("plain")
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"\n{device}")
print(f"cache build:  {build:8.0f} img/s  ({rows} images, each with its flip)")
print(f"distill:      {distill:8.0f} img/s")
print(f"plain:        {plain:8.0f} img/s")
print(f"distill / plain step time: {plain / distill:.3f}")
EOF
