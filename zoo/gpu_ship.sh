#!/bin/bash
# gpu_ship.sh OUT DEADLINE_EPOCH: wait until all trainings ended or the deadline passed, then put
# finished, not yet shipped models (xz-compressed weights split in 15 MB chunks, at most ~58 MiB
# of them per call) and a small bundle (logs, exit codes, model dirs without weights, sha256s) in OUT.
OUT=$1; deadline=$2; Z=/tmp/zoo; models=$(cat $Z/model_list)
while :; do
  all=1; for m in $models; do [ -f $Z/$m.rc ] || all=0; done
  [ $all = 1 ] && break
  [ $(date +%s) -ge $deadline ] && break
  sleep 5
done
echo "elapsed since launch: $(( $(date +%s) - $(cat $Z/start) )) s"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
used=0
compress() {  # compress SRC DST
  if command -v xz > /dev/null; then xz -T0 -6 --block-size=4MiB -c "$1" > "$2"
  else python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.compress(open(sys.argv[1], 'rb').read(), preset=6))" "$1" "$2"; fi
}
for m in $models; do
  echo "== $m rc=$(cat $Z/$m.rc 2>/dev/null || echo running)"; grep -v '"event": "done"' $Z/$m.log | tail -n 3 | cut -c1-400
  [ "$(cat $Z/$m.rc 2>/dev/null)" = 0 ] || continue
  [ -f $Z/$m.shipped ] && continue
  st=$Z/models/$m/model.safetensors
  if [ ! -f $Z/$m.st.xz ]; then
    compress $st $Z/$m.st.xz.tmp && mv $Z/$m.st.xz.tmp $Z/$m.st.xz || continue
    (cd $Z && sha256sum models/$m/model.safetensors $m.st.xz >> $Z/sha256s.txt)
  fi
  sz=$(stat -c %s $Z/$m.st.xz)
  [ $((used + sz)) -le $((58 * 1024 * 1024)) ] || { echo "$m: next call"; continue; }
  split -b 15M -d $Z/$m.st.xz $OUT/$m.st.xz.
  used=$((used + sz)); touch $Z/$m.shipped; echo "$m shipped: $sz bytes xz"
done
cat $Z/sha256s.txt 2>/dev/null
tar czf $OUT/meta.tgz -C $Z --exclude=model.safetensors --exclude='tokenizer*' --exclude='*.xz*' .
ls -l $OUT
