#!/usr/bin/env bash
# The word count of benches/wordcount.rs on Apache Flink, on the same text, for a
# side-by-side measurement. Never run by CI or `cargo test`: it installs Flink (pip's
# apache-flink, whose jars are Flink's own) into a virtualenv and needs Java 17 with javac.
#
#   benches/flink/run.sh                      # Flink only
#   ROUNDS=2 WITH_TIDEMARK=1 benches/flink/run.sh   # tidemark and Flink, alternately
#
# For each backend (hashmap; rocksdb with incremental checkpoints) and parallelism: words
# per second (words / the job's net runtime; and / the time from submission to the end),
# checkpoint durations (checkpointDuration of the JobManager's "Completed checkpoint"
# lines: trigger to completion), and a check that the sink committed one line per word.
# Then, per backend, recovery after a kill: a job killed (SIGKILL of its JVM) after
# KILL_AFTER_CHECKPOINTS checkpoints is started again from its latest retained checkpoint;
# reported: from the job's submission to the cluster (the dispatcher's "Submitting job"
# line) to the first record out of the restored sum, from the call of executeAsync (which
# starts the local MiniCluster first) to it, and from the JVM's start to it.
#
# Environment (defaults in brackets):
#   TIDEMARK_WC_WORDS [20000000]  words of the text
#   TIDEMARK_WC_DIR   [$WORK/wc]  the text is <dir>/text; written by the tidemark bench
#                                  (cargo bench --bench wordcount) when missing
#   WORK              [${TMPDIR:-/tmp}/tidemark-flink-wc]  venv, classes, runs, logs
#   FLINK_VERSION     [2.3.0]     the apache-flink release pip installs
#   BACKENDS          [hashmap rocksdb]
#   PARALLELISM       [1 2]
#   ROUNDS            [1]         repetitions of every throughput run
#   WITH_TIDEMARK     [0]         1: each round runs the tidemark bench first (same text,
#                                  backends memory, filesystem and lsm, same parallelisms)
#   RECOVERY          [1]         0: no kill and restart
#   RECOVERY_PARALLELISM [1]
#   KILL_AFTER_CHECKPOINTS [5]
#   STATE_RECOVERY_MB [100 1024]  recovery at these sizes of keyed state (StateRecovery.java:
#                                  1 KiB of value state per key, a failure once a checkpoint
#                                  holds every key, a restart in the same MiniCluster;
#                                  reported: failure -> first record after the restore);
#                                  empty skips
#   STATE_RECOVERY_PARALLELISM [2]
#   STATE_RECOVERY_JAVA_OPTS [-Xmx8g]  the hashmap backend keeps the state on the heap
#   JAVA_OPTS         []          extra JVM options (e.g. -Xmx4g)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORDS="${TIDEMARK_WC_WORDS:-20000000}"
WORK="${WORK:-${TMPDIR:-/tmp}/tidemark-flink-wc}"
WC_DIR="${TIDEMARK_WC_DIR:-$WORK/wc}"
TEXT="$WC_DIR/text"
FLINK_VERSION="${FLINK_VERSION:-2.3.0}"
BACKENDS="${BACKENDS:-hashmap rocksdb}"
PARALLELISM="${PARALLELISM:-1 2}"
ROUNDS="${ROUNDS:-1}"
WITH_TIDEMARK="${WITH_TIDEMARK:-0}"
RECOVERY="${RECOVERY:-1}"
RECOVERY_PARALLELISM="${RECOVERY_PARALLELISM:-1}"
KILL_AFTER_CHECKPOINTS="${KILL_AFTER_CHECKPOINTS:-5}"
JAVA_OPTS="${JAVA_OPTS:-}"
STATE_RECOVERY_MB="${STATE_RECOVERY_MB-100 1024}"
STATE_RECOVERY_PARALLELISM="${STATE_RECOVERY_PARALLELISM:-2}"
STATE_RECOVERY_JAVA_OPTS="${STATE_RECOVERY_JAVA_OPTS:--Xmx8g}"
mkdir -p "$WORK"

command -v java >/dev/null || { echo "java not found (Java 17 is needed)" >&2; exit 1; }
command -v javac >/dev/null || { echo "javac not found (a JDK 17 is needed)" >&2; exit 1; }

# Flink: pip's apache-flink carries Flink's jars under pyflink/lib.
VENV="$WORK/venv"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/pip" show apache-flink 2>/dev/null | grep -q "^Version: $FLINK_VERSION\$"; then
    "$VENV/bin/pip" install -q "apache-flink==$FLINK_VERSION"
fi
PYFLINK="$("$VENV/bin/python" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')"
CP="$(ls "$PYFLINK"/lib/*.jar | tr '\n' ':')"
CLASSES="$WORK/classes"
mkdir -p "$CLASSES"
javac -nowarn -cp "$CP" -d "$CLASSES" "$HERE/WordCount.java" "$HERE/StateRecovery.java"
CP="$CLASSES:$CP"
echo "Flink $FLINK_VERSION ($PYFLINK/lib), $(java -version 2>&1 | head -1)"

# Logs go to a file: the checkpoint durations are read from the coordinator's lines.
LOG4J="$WORK/log4j2.properties"
cat >"$LOG4J" <<'EOF'
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FileAppender
appender.file.name = FileAppender
appender.file.type = File
appender.file.fileName = ${sys:log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %c{1} - %m%n
EOF

# The text, written by the tidemark bench (the same generator for both sides).
if [ "$(cat "$TEXT/_words" 2>/dev/null || true)" != "$WORDS" ]; then
    # Only the text: no backends, no recovery runs.
    (cd "$REPO" && TIDEMARK_WC_DIR="$WC_DIR" TIDEMARK_WC_WORDS="$WORDS" TIDEMARK_WC_BACKENDS= \
        TIDEMARK_WC_RECOVERY_MB=0 cargo bench --bench wordcount) >/dev/null
fi
echo "text: $WORDS words in $TEXT"

flink() { # log-file args... (in a subshell: the JVM replaces it, so $! is the JVM)
    local log="$1"
    shift
    # shellcheck disable=SC2086
    exec java $JAVA_OPTS -Dlog.file="$log" -Dlog4j.configurationFile="file://$LOG4J" -cp "$CP" WordCount "$@"
}

field() { # name file
    sed -n "s/^$1=//p" "$2" | tail -1
}

checkpoint_stats() { # log -> "count median max" of checkpointDuration (ms)
    sed -n 's/.*Completed checkpoint .*checkpointDuration=\([0-9]*\) ms.*/\1/p' "$1" | sort -n |
        awk '{v[NR]=$1} END {if (NR==0) {print "0 - -"} else {print NR, v[int((NR+1)/2)], v[NR]}}'
}

committed_lines() { # sink dir: lines of committed files (not hidden, not in progress)
    find "$1" -type f -name 'part-*' -not -name '.*' -not -path '*/.*' -print0 | xargs -0 cat | wc -l
}

tidemark_round() {
    local ps
    ps="$(echo "$PARALLELISM" | tr ' ' ',')"
    echo "== tidemark (cargo bench --bench wordcount), $WORDS words"
    (cd "$REPO" && TIDEMARK_WC_DIR="$WC_DIR" TIDEMARK_WC_WORDS="$WORDS" \
        TIDEMARK_WC_BACKENDS=memory,filesystem,lsm TIDEMARK_WC_PARALLELISM="$ps" \
        TIDEMARK_WC_RECOVERY_MB=0 cargo bench --bench wordcount 2>/dev/null)
}

flink_round() {
    echo "== Flink $FLINK_VERSION, $WORDS words"
    printf '%-8s %3s %12s %12s %14s %14s %6s %12s %10s\n' backend p "net s" "wall s" \
        "words/s net" "words/s wall" ckpts "ckpt median" "ckpt max"
    for b in $BACKENDS; do
        for p in $PARALLELISM; do
            local run="$WORK/run-$b-$p"
            rm -rf "$run"
            mkdir -p "$run"
            (flink "$run/flink.log" "$b" "$p" "$TEXT" "$run/out" "$run/checkpoints") >"$run/stdout" 2>"$run/stderr" || {
                echo "Flink failed ($b, p=$p): see $run/stderr and $run/flink.log" >&2
                tail -20 "$run/stderr" >&2
                exit 1
            }
            local net wall lines
            net="$(field NET_RUNTIME_MS "$run/stdout")"
            wall="$(field WALL_MS "$run/stdout")"
            lines="$(committed_lines "$run/out")"
            if [ "$lines" != "$WORDS" ]; then
                echo "Flink ($b, p=$p) committed $lines lines, expected $WORDS" >&2
                exit 1
            fi
            read -r n med mx <<<"$(checkpoint_stats "$run/flink.log")"
            awk -v b="$b" -v p="$p" -v w="$WORDS" -v net="$net" -v wall="$wall" -v n="$n" -v med="$med" -v mx="$mx" \
                'BEGIN {printf "%-8s %3s %12.2f %12.2f %14.0f %14.0f %6s %9s ms %7s ms\n", b, p, net/1000, wall/1000, w/(net/1000), w/(wall/1000), n, med, mx}'
            rm -rf "$run/out" "$run/checkpoints"
        done
    done
}

flink_recovery() {
    echo "== Flink $FLINK_VERSION: restart from the latest checkpoint after a kill (parallelism $RECOVERY_PARALLELISM)"
    printf '%-8s %6s %24s %24s %24s\n' backend chk "job submitted->1st rec" "execute()->1st rec" "JVM start->1st rec"
    for b in $BACKENDS; do
        local run="$WORK/recovery-$b"
        rm -rf "$run"
        mkdir -p "$run"
        (flink "$run/flink-1.log" "$b" "$RECOVERY_PARALLELISM" "$TEXT" "$run/out" "$run/checkpoints") >"$run/stdout-1" 2>&1 &
        local pid=$!
        local waited=0
        while [ "$(find "$run/checkpoints" -path '*/chk-*/_metadata' 2>/dev/null | wc -l)" -lt 1 ] ||
            [ "$(grep -c 'Completed checkpoint' "$run/flink-1.log" 2>/dev/null || echo 0)" -lt "$KILL_AFTER_CHECKPOINTS" ]; do
            sleep 0.2
            waited=$((waited + 1))
            if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -gt 3000 ]; then
                echo "Flink ($b) ended or took too long before $KILL_AFTER_CHECKPOINTS checkpoints" >&2
                exit 1
            fi
        done
        kill -9 "$pid"
        wait "$pid" 2>/dev/null || true
        local chk
        chk="$(find "$run/checkpoints" -path '*/chk-*/_metadata' -printf '%h\n' |
            awk -F'chk-' '{print $NF, $0}' | sort -n | tail -1 | cut -d' ' -f2-)"
        (flink "$run/flink-2.log" "$b" "$RECOVERY_PARALLELISM" "$TEXT" "$run/out" "$run/checkpoints" "$chk") >"$run/stdout-2" 2>"$run/stderr-2" || {
            echo "Flink restore failed ($b): see $run/stderr-2 and $run/flink-2.log" >&2
            tail -20 "$run/stderr-2" >&2
            exit 1
        }
        local jvm submit first
        jvm="$(field JVM_START_MS "$run/stdout-2")"
        submit="$(field SUBMIT_MS "$run/stdout-2")"
        first="$(field FIRST_RECORD_MS "$run/stdout-2")"
        # The dispatcher's "Submitting job" line: the job reaches the (mini) cluster, which
        # execute() started first.
        local submitted
        submitted="$(sed -n 's/^\([0-9-]* [0-9:]*\),\([0-9]*\) .*Dispatcher - Submitting job.*/\1.\2/p' "$run/flink-2.log" | head -1)"
        submitted="$(date -d "$submitted" +%s%3N)"
        printf '%-8s %6s %21s ms %21s ms %21s ms\n' "$b" "${chk##*chk-}" "$((first - submitted))" "$((first - submit))" "$((first - jvm))"
        rm -rf "$run/out" "$run/checkpoints"
    done
}

flink_state_recovery() {
    echo "== Flink $FLINK_VERSION: restart in the same MiniCluster after a failure (parallelism $STATE_RECOVERY_PARALLELISM)"
    printf '%-8s %8s %9s %14s %12s %14s %12s\n' backend MB keys "ckpt bytes" "build s" "ckpt median" "failure->1st rec"
    for mb in $STATE_RECOVERY_MB; do
        for b in $BACKENDS; do
            local run="$WORK/state-recovery-$b-$mb"
            rm -rf "$run"
            mkdir -p "$run"
            # shellcheck disable=SC2086
            java $STATE_RECOVERY_JAVA_OPTS -Dlog.file="$run/flink.log" -Dlog4j.configurationFile="file://$LOG4J" \
                -cp "$CP" StateRecovery "$b" "$STATE_RECOVERY_PARALLELISM" "$mb" "$run/checkpoints" >"$run/stdout" 2>"$run/stderr" || {
                echo "Flink state recovery failed ($b, $mb MB): see $run/stderr and $run/flink.log" >&2
                tail -20 "$run/stderr" >&2
                exit 1
            }
            if [ "$(field FOUND_STATE "$run/stdout")" != true ]; then
                echo "Flink ($b, $mb MB): the first record after the restore did not find its state" >&2
                exit 1
            fi
            local failed first bytes
            failed="$(field FAILED_MS "$run/stdout")"
            first="$(field FIRST_RECORD_MS "$run/stdout")"
            bytes="$(sed -n 's/.*Completed checkpoint [0-9]* for job [0-9a-f]* (\([0-9]*\) bytes.*/\1/p' "$run/flink.log" | tail -1)"
            read -r _ med _ <<<"$(checkpoint_stats "$run/flink.log")"
            printf '%-8s %8s %9s %14s %12.1f %11s ms %13s ms\n' "$b" "$mb" "$(field KEYS "$run/stdout")" "$bytes" \
                "$(awk -v m="$(field BUILD_MS "$run/stdout")" 'BEGIN {print m/1000}')" "$med" "$((first - failed))"
            rm -rf "$run/checkpoints"
        done
    done
}

for round in $(seq 1 "$ROUNDS"); do
    echo "=== round $round of $ROUNDS"
    if [ "$WITH_TIDEMARK" = 1 ]; then
        tidemark_round
    fi
    flink_round
done
if [ "$RECOVERY" = 1 ]; then
    flink_recovery
fi
if [ -n "$STATE_RECOVERY_MB" ]; then
    flink_state_recovery
fi
