#!/bin/bash
# gpu_launch.sh [MODEL...]: start the zoo trainings (default: every model of config.yaml) in parallel on the
# one GPU, each in its own process session so that they outlive this call; logs and exit codes go to /tmp/zoo.
G=zoo/.build/gpu; Z=/tmp/zoo; mkdir -p $Z
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $G/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import sys, transformers, torch; print(sys.version.split()[0], transformers.__version__, torch.__version__, torch.cuda.get_device_name())" || exit 1
date +%s > $Z/start
models=${*:-$(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('zoo/config.yaml'))['models']))")}
echo "$models" > $Z/model_list  # not $Z/models: that is the output folder
for m in $models; do
  setsid nohup bash -c "python3 zoo/train.py --data-dir $G --models $m --out $Z/models > $Z/$m.log 2>&1; echo \$? > $Z/$m.rc" < /dev/null > /dev/null 2>&1 &
done
sleep 1; ps aux | grep -c "[z]oo/train.py"
