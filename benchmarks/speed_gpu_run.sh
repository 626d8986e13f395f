#!/usr/bin/env bash
# The one prepared GPU run for the speed issue: every figure it asks for, in about 8 minutes.
# On the device machine, from the repository root, after installing the wheels of
#   bash ../shared/device/make-wheels.sh pytest==8.3.5 pluggy==1.5.0 iniconfig==2.0.0 packaging==24.2
# (optuna, pycocotools, effdet, ..., and pytest for the GPU tests):
#
#   bash benchmarks/speed_gpu_run.sh "$OUT" [PARTS]
#
# PARTS is a comma list of tests,throughput,cudnn,packed,quality (default: all). The limits add
# up to 560 s: give the device call timeout_s 590, and rerun only the parts that failed.
# Each part has its own time limit and writes its own JSON, so a part that fails or runs out of
# time loses only itself. Copy the JSON files into benchmarks/results/ and commit them with this
# script: the command of each is inside its file.
set -u
out=${1:?usage: speed_gpu_run.sh OUTPUT_FOLDER}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
parts=",${2:-tests,throughput,cudnn,packed,quality},"
want() { [[ $parts == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
log="$out/run.log"
touch "$log"
want tests && { echo "== GPU tests (CUDA graph = eager, no host sync, the fast path end to end)" | tee -a "$log"
timeout 80 $py -m pytest -q -p no:cacheprovider -m gpu tests/detector_tests/test_train_step_gpu.py \
  2>&1 | tee -a "$log"; }
want throughput && { echo "== throughput: effdet against effscale, lever by lever (and two profiles)" | tee -a "$log"
timeout 170 $py benchmarks/train_throughput.py --cases 512x32,256x32,256x128 \
  --variants effdet,plain,fused,graph,graph_nhwc --profile fused@256x32 --profile graph@256x32 \
  --json "$out/train_throughput_h200.json" 2>&1 | tee -a "$log"; }
want cudnn && { echo "== throughput with cudnn.benchmark" | tee -a "$log"
timeout 60 $py benchmarks/train_throughput.py --cases 512x32,256x32 --variants effdet,graph \
  --cudnn-benchmark --json "$out/train_throughput_cudnn_h200.json" 2>&1 | tee -a "$log"; }
want packed && { echo "== packed trials" | tee -a "$log"
timeout 110 $py benchmarks/packed_trials.py --counts 1,2,4,8 --seconds 10 \
  --json "$out/packed_h200.json" 2>&1 | tee -a "$log"; }
want quality && { echo "== quality: AP of the plain and fast paths on the same seeds" | tee -a "$log"
timeout 140 $py benchmarks/proxy_quality.py --steps 200 --seeds 0,1 --train-images 768 \
  --json "$out/proxy_quality_h200.json" 2>&1 | tee -a "$log"; }
ls -l "$out"
