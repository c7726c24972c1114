#!/bin/bash
# gpu_bloom_ab.sh OUT DEADLINE_EPOCH: run 4, BLOOM 8 x 384 trained twice at once on the one GPU,
# identical but for the training precision (bf16-autocast, as run 3, and fp32 with TF32 matmuls),
# to test whether bf16 rounding of BLOOM's ALiBi scores (see autocast() in train.py) is what keeps
# it from copying. Waits for both (or the deadline), then puts both models' xz-compressed weights
# (15 MB chunks) and meta.tgz (logs, metrics, cards, sha256 sums) in OUT.
OUT=$1; deadline=$2; G=zoo/.build/gpu; Z=/tmp/zoo; mkdir -p $Z
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $G/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import sys, transformers, torch; print(sys.version.split()[0], transformers.__version__, torch.__version__, torch.cuda.get_device_name())" || exit 1
compress() {  # compress SRC DST (xz if the machine has it, else Python's lzma)
  if command -v xz > /dev/null; then xz -T0 -6 --block-size=4MiB -c "$1" > "$2"
  else python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.compress(open(sys.argv[1], 'rb').read(), preset=6))" "$1" "$2"; fi
}
date +%s > $Z/start
for p in bf16-autocast fp32; do
  setsid nohup bash -c "python3 zoo/train.py --data-dir $G --models bloom-alibi --precision $p --out $Z/$p > $Z/$p.log 2>&1; echo \$? > $Z/$p.rc" < /dev/null > /dev/null 2>&1 &
done
while :; do
  [ -f $Z/bf16-autocast.rc ] && [ -f $Z/fp32.rc ] && break
  [ $(date +%s) -ge $deadline ] && break
  sleep 5
done
echo "elapsed since launch: $(( $(date +%s) - $(cat $Z/start) )) s"
for p in bf16-autocast fp32; do
  echo "== $p rc=$(cat $Z/$p.rc 2>/dev/null || echo running)"; grep -E '"copy_probe"|"event": "done"' $Z/$p.log | tail -n 4 | cut -c1-600
  [ "$(cat $Z/$p.rc 2>/dev/null)" = 0 ] || continue
  st=$Z/$p/bloom-alibi/model.safetensors
  compress $st $Z/$p.st.xz && split -b 15M -d $Z/$p.st.xz $OUT/$p.st.xz.
  (cd $Z && sha256sum $p/bloom-alibi/model.safetensors $p.st.xz >> $Z/sha256s.txt)
done
cat $Z/sha256s.txt 2>/dev/null
tar czf $OUT/meta.tgz -C $Z --exclude=model.safetensors --exclude='tokenizer*' --exclude='*.xz*' .
ls -l $OUT
