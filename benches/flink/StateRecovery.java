// The recovery job of benches/wordcount.rs on Apache Flink, for a side-by-side measurement
// of recovery time at a given size of keyed state.
//
// A sequence source (parallelism p) emits i = 0, 1, 2, ...: records i < keys write 1 KiB of
// random bytes (seeded by the key) into ValueState of key i; later records read key
// i % keys and pass on whether it held a value. A map before keyBy throws once a checkpoint
// holding every key has completed (first attempt only); the fixed-delay restart strategy
// (one attempt, no delay) restarts the job in the same MiniCluster from that checkpoint. A
// map behind the keyed function notes the first record of the second attempt (which must
// have found its key's state), and the job is cancelled.
//
// usage: StateRecovery <hashmap|rocksdb> <parallelism> <megabytes> <checkpoints>
//
// keys = megabytes * 1,000,000 / 1024 (1024 MB: 1,000,000 keys), as the tidemark bench.
// Prints (one line each, for run.sh):
//   KEYS=<n>
//   FAILED_MS=<ms>          the injected failure (epoch ms)
//   FIRST_RECORD_MS=<ms>    the first record out of the keyed function after the restart
//   FOUND_STATE=<bool>      whether that record found its key's state
//   BUILD_MS=<ms>           from submission to the failure

import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

public class StateRecovery {
    static final int VALUE_BYTES = 1024;
    static long keys;
    /** Keys written in the first attempt, over all keyed subtasks. */
    static final AtomicLong WRITTEN = new AtomicLong();
    /** The first checkpoint snapshotted after every key was written; the next one holds all. */
    static final AtomicLong FULL = new AtomicLong(Long.MAX_VALUE);
    /** A checkpoint holding every key completed: the failure may strike. */
    static final AtomicBoolean READY = new AtomicBoolean();
    static final AtomicLong FAILED_MS = new AtomicLong();
    static final AtomicLong FIRST_MS = new AtomicLong();
    static volatile boolean foundState;
    static final CountDownLatch FIRST = new CountDownLatch(1);

    /** Throws on the first read after a full checkpoint, in the first attempt. */
    public static class Failure extends RichMapFunction<Tuple2<Long, Boolean>, Tuple2<Long, Boolean>> {
        @Override
        public Tuple2<Long, Boolean> map(Tuple2<Long, Boolean> r) {
            if (getRuntimeContext().getTaskInfo().getAttemptNumber() == 0 && !r.f1 && READY.get()) {
                FAILED_MS.compareAndSet(0, System.currentTimeMillis());
                throw new RuntimeException("injected failure");
            }
            return r;
        }
    }

    /** Writes a key's 1 KiB value, or reads it and emits whether it was there. */
    public static class Payloads extends KeyedProcessFunction<Long, Tuple2<Long, Boolean>, Boolean>
            implements CheckpointedFunction, CheckpointListener {
        private transient ValueState<byte[]> payload;

        @Override
        public void open(OpenContext ctx) {
            payload = getRuntimeContext().getState(
                    new ValueStateDescriptor<>("payload", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        }

        @Override
        public void processElement(Tuple2<Long, Boolean> r, Context ctx, Collector<Boolean> out) throws Exception {
            if (r.f1) {
                byte[] v = new byte[VALUE_BYTES];
                new SplittableRandom(r.f0).nextBytes(v);
                payload.update(v);
                WRITTEN.incrementAndGet();
            } else {
                out.collect(payload.value() != null);
            }
        }

        @Override
        public void snapshotState(FunctionSnapshotContext ctx) {
            if (WRITTEN.get() >= keys) {
                FULL.accumulateAndGet(ctx.getCheckpointId(), Math::min);
            }
        }

        @Override
        public void initializeState(FunctionInitializationContext ctx) {}

        @Override
        public void notifyCheckpointComplete(long id) {
            // Every write happened before checkpoint FULL's snapshot, hence before FULL + 1
            // was triggered: FULL + 1 holds every key.
            if (id > FULL.get()) {
                READY.set(true);
            }
        }
    }

    /** Notes the first record of a later attempt. */
    public static class FirstRecord extends RichMapFunction<Boolean, Boolean> {
        @Override
        public Boolean map(Boolean found) {
            if (getRuntimeContext().getTaskInfo().getAttemptNumber() > 0
                    && FIRST_MS.compareAndSet(0, System.currentTimeMillis())) {
                foundState = found;
                FIRST.countDown();
            }
            return found;
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: StateRecovery <hashmap|rocksdb> <parallelism> <megabytes> <checkpoints>");
            System.exit(2);
        }
        String backend = args[0];
        int parallelism = Integer.parseInt(args[1]);
        long mb = Long.parseLong(args[2]);
        String checkpoints = args[3];
        keys = Math.max(1, mb * 1_000_000L / VALUE_BYTES);
        final long k = keys;
        System.out.println("KEYS=" + keys);

        Map<String, String> conf = WordCount.checkpointing(backend, checkpoints);
        conf.put("restart-strategy.type", "fixed-delay");
        conf.put("restart-strategy.fixed-delay.attempts", "1");
        conf.put("restart-strategy.fixed-delay.delay", "0 ms");
        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createLocalEnvironment(parallelism, Configuration.fromMap(conf));

        env.fromSequence(0, Long.MAX_VALUE)
                .uid("records")
                .map(new MapFunction<Long, Tuple2<Long, Boolean>>() {
                    @Override
                    public Tuple2<Long, Boolean> map(Long i) {
                        return Tuple2.of(i % k, i < k);
                    }
                })
                .returns(Types.TUPLE(Types.LONG, Types.BOOLEAN))
                .uid("split")
                .map(new Failure())
                .uid("failure")
                .keyBy(new KeySelector<Tuple2<Long, Boolean>, Long>() {
                    @Override
                    public Long getKey(Tuple2<Long, Boolean> r) {
                        return r.f0;
                    }
                })
                .process(new Payloads())
                .uid("payloads")
                .map(new FirstRecord())
                .uid("first-record")
                .sinkTo(new org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink<>())
                .uid("discard");

        long submit = System.currentTimeMillis();
        JobClient client = env.executeAsync("state recovery " + backend + " " + mb + " MB");
        if (!FIRST.await(1800, TimeUnit.SECONDS)) {
            System.out.println("NO_FIRST_RECORD");
            System.exit(1);
        }
        System.out.println("FAILED_MS=" + FAILED_MS.get());
        System.out.println("FIRST_RECORD_MS=" + FIRST_MS.get());
        System.out.println("FOUND_STATE=" + foundState);
        System.out.println("BUILD_MS=" + (FAILED_MS.get() - submit));
        System.out.flush();
        client.cancel().get(60, TimeUnit.SECONDS);
        System.exit(0);
    }
}
