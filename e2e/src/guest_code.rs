//! bash code that runs in guests for the cases that are more than one guest test.

/// libdrm's own KMS test tool, as a second opinion on the KMS paths kms-pattern covers.
pub const MODETEST: &str = r#"modetest -M virtio_gpu -c >/tmp/connectors || { echo "FAIL: modetest: listing connectors"; exit 1; }
conn=$(awk '$3 == "connected" { print $1; exit }' /tmp/connectors)
[ -n "$conn" ] || { echo "FAIL: modetest: no connected connector"; exit 1; }
echo "modetest: connector $conn connected"
modetest -M virtio_gpu -e -p >/tmp/resources || { echo "FAIL: modetest: listing encoders and planes"; exit 1; }
# modetest draws its test pattern, then waits for a newline before restoring the mode.
if ! echo | timeout 60 modetest -M virtio_gpu -s "$conn:1024x768" >/tmp/set.log 2>&1; then
    tail -5 /tmp/set.log
    echo "FAIL: modetest: mode set on connector $conn"
    exit 1
fi
grep -a "setting mode" /tmp/set.log || true
echo "PASS: modetest"
"#;

/// kmscube in the guest ($want and $done_file are set in front of it). kmscube prints
/// "Rendered N frames ..." every 2 s and once at the end, where N counts the frames after the
/// first. On its way it holds a frame on the screen for the host's screendump: the first
/// framebuffer kmscube puts on the plane (debugfs state) is a blank one, set before its first
/// draw; once another one replaces it (the first page flip), a cube is on the screen. kmscube
/// runs in short slices (SIGCONT, 50 ms, SIGSTOP) and the plane is looked at while it is
/// stopped, so however fast it renders (virgl draws all its frames in under a second) the flip
/// is seen before it ends; it stays stopped until the host has its screendump ($done_file),
/// then goes on to the end.
pub const KMSCUBE: &str = r#"deadline=$((SECONDS + 150))
state=/sys/kernel/debug/dri/0/state
watch_kmscube() {
    # kmscube quits ("user interrupted!") once its stdin is readable, and a
    # background job's stdin is /dev/null: a FIFO opened read-write never is.
    rm -f /tmp/kmscube.in
    mkfifo /tmp/kmscube.in
    kmscube --count="$want" >/tmp/kmscube.log 2>&1 <>/tmp/kmscube.in &
    pid=$!
    kill -STOP $pid
    held=0 first=""
    while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do
        fb=$(awk '/allocated by = kmscube/ { print prev } { prev = $1 }' $state 2>/dev/null)
        [ -n "$first" ] || first=$fb
        if [ -n "$fb" ] && [ "$fb" != "$first" ]; then
            held=1
            break
        fi
        kill -CONT $pid 2>/dev/null
        sleep 0.05
        kill -STOP $pid 2>/dev/null
    done
}
watch_kmscube
# Under TCG a guest's sleep can run long (its clocksource stalls), and kmscube may draw all its
# frames in one slice: that says nothing of the device, so it runs once more.
if [ $held != 1 ] && ! kill -0 $pid 2>/dev/null && wait $pid; then
    echo "kmscube: it ended before a page flip was seen (a slice ran long): once more"
    watch_kmscube
fi
if [ $held = 1 ]; then
    echo "kmscube: holding a frame ($first, then $fb on the plane)"
    echo KMSCUBE-HOLD
    limit=$((SECONDS + 60))
    while [ ! -e "$done_file" ] && [ $SECONDS -lt $limit ]; do sleep 0.1; done
    kill -CONT $pid
fi
while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do sleep 0.1; done
kill -0 $pid 2>/dev/null && kill -KILL $pid
wait $pid
rc=$?
grep -aE '^Using|renderer:' /tmp/kmscube.log
last=$(grep -a '^Rendered' /tmp/kmscube.log | tail -1)
echo "$last"
if [ "$rc" -ne 0 ]; then
    tail -5 /tmp/kmscube.log
    echo "FAIL: kmscube: exit status $rc"
    exit 1
fi
frames=$(echo "$last" | awk '{ print $2 }')
if [ "${frames:-0}" -lt $((want - 1)) ]; then
    echo "FAIL: kmscube: rendered ${frames:-no} frames of $want"
    exit 1
fi
if [ $held != 1 ]; then
    echo "FAIL: kmscube: no page flip seen in $state, no frame held for the screendump"
    exit 1
fi
echo "PASS: kmscube"
"#;

/// The guest half of venus-probe ($want is set in front of it): the kernel found the
/// host-visible window (shared memory region 1), of the size vgpud was given.
pub const HOSTMEM: &str = r#"line=$(dmesg | grep -a -m1 'Host memory window:')
if [ -z "$line" ]; then
    echo "FAIL: host-memory-window: no 'Host memory window:' in the kernel log"
    exit 1
fi
echo "host-memory-window: ${line#*] }"
size=${line##*+}
if [ $((size)) -ne $((want)) ]; then
    echo "FAIL: host-memory-window: $size bytes, expected $want"
    exit 1
fi
echo "PASS: host-memory-window"
"#;
