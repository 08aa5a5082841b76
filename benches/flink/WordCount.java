// The word count of benches/wordcount.rs on Apache Flink, for a side-by-side measurement.
//
// Lines of the files under <input> (FileSource, TextLineInputFormat), split into words
// (runs of letters and digits, lower-cased: tidemark's wordcount::words), (word, 1),
// keyBy(word), sum(1), every updated count written as "word count" into an exactly-once
// row-format FileSink under <output>. Checkpoints every second into <checkpoints>
// (retained on cancellation), with the hashmap backend or rocksdb with incremental
// checkpoints, in a local MiniCluster of the given parallelism.
//
// usage: WordCount <hashmap|rocksdb> <parallelism> <input> <output> <checkpoints> [<restore>]
//
// Prints (one line each, for run.sh):
//   JVM_START_MS=<ms>        the JVM's start (epoch ms)
//   SUBMIT_MS=<ms>           just before the job was submitted
//   FIRST_RECORD_MS=<ms>     the first count the sum emitted (in this JVM)
//   NET_RUNTIME_MS=<ms>      the job's net runtime (Flink's JobExecutionResult)
//   WALL_MS=<ms>             from submission to the job's end
// With <restore> (a chk-N directory) the job starts from that checkpoint, prints
// FIRST_RECORD_MS as soon as a record passed the sum, then cancels the job and exits.

import java.lang.management.ManagementFactory;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.serialization.SimpleStringEncoder;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.fs.Path;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;

public class WordCount {
    static final CountDownLatch FIRST = new CountDownLatch(1);
    static volatile long firstRecordMs = 0;

    /** Notes the first record that passed the sum in this JVM. */
    public static class FirstRecord implements MapFunction<Tuple2<String, Long>, String> {
        @Override
        public String map(Tuple2<String, Long> t) {
            if (firstRecordMs == 0) {
                synchronized (FirstRecord.class) {
                    if (firstRecordMs == 0) {
                        firstRecordMs = System.currentTimeMillis();
                        FIRST.countDown();
                    }
                }
            }
            return t.f0 + " " + t.f1;
        }
    }

    /** tidemark's wordcount::words: runs of letters and digits, lower-cased. */
    public static class Split implements FlatMapFunction<String, Tuple2<String, Long>> {
        @Override
        public void flatMap(String line, Collector<Tuple2<String, Long>> out) {
            int n = line.length();
            int i = 0;
            while (i < n) {
                while (i < n && !Character.isLetterOrDigit(line.charAt(i))) {
                    i++;
                }
                int start = i;
                while (i < n && Character.isLetterOrDigit(line.charAt(i))) {
                    i++;
                }
                if (i > start) {
                    out.collect(Tuple2.of(line.substring(start, i).toLowerCase(), 1L));
                }
            }
        }
    }

    /**
     * The backend (hashmap with full checkpoints, or rocksdb with incremental ones) and
     * exactly-once checkpoints every second into a local directory: the settings both
     * harness jobs share.
     */
    static Map<String, String> checkpointing(String backend, String checkpoints) {
        Map<String, String> conf = new HashMap<>();
        conf.put("state.backend.type", backend);
        conf.put("execution.checkpointing.incremental", backend.equals("rocksdb") ? "true" : "false");
        conf.put("execution.checkpointing.interval", "1 s");
        conf.put("execution.checkpointing.mode", "EXACTLY_ONCE");
        conf.put("execution.checkpointing.storage", "filesystem");
        conf.put("execution.checkpointing.dir", "file://" + checkpoints);
        return conf;
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println(
                    "usage: WordCount <hashmap|rocksdb> <parallelism> <input> <output> <checkpoints> [<restore>]");
            System.exit(2);
        }
        String backend = args[0];
        int parallelism = Integer.parseInt(args[1]);
        String input = args[2];
        String output = args[3];
        String checkpoints = args[4];
        String restore = args.length > 5 ? args[5] : null;
        System.out.println("JVM_START_MS=" + ManagementFactory.getRuntimeMXBean().getStartTime());

        Map<String, String> conf = checkpointing(backend, checkpoints);
        conf.put("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION");
        conf.put("restart-strategy.type", "none");
        if (restore != null) {
            conf.put("execution.state-recovery.path", "file://" + restore);
        }
        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createLocalEnvironment(parallelism, Configuration.fromMap(conf));

        FileSource<String> source =
                FileSource.forRecordStreamFormat(new TextLineInputFormat(), new Path(input)).build();
        DataStream<String> counts = env.fromSource(source, WatermarkStrategy.noWatermarks(), "lines")
                .uid("lines")
                .flatMap(new Split())
                .uid("words")
                .returns(Types.TUPLE(Types.STRING, Types.LONG))
                .keyBy(new KeySelector<Tuple2<String, Long>, String>() {
                    @Override
                    public String getKey(Tuple2<String, Long> t) {
                        return t.f0;
                    }
                })
                .sum(1)
                .uid("counts")
                .map(new FirstRecord())
                .uid("format");
        counts.sinkTo(FileSink.forRowFormat(new Path(output), new SimpleStringEncoder<String>("UTF-8")).build())
                .uid("sink");

        long submit = System.currentTimeMillis();
        System.out.println("SUBMIT_MS=" + submit);
        if (restore == null) {
            JobExecutionResult r = env.execute("word count " + backend + " p=" + parallelism);
            long end = System.currentTimeMillis();
            System.out.println("FIRST_RECORD_MS=" + firstRecordMs);
            System.out.println("NET_RUNTIME_MS=" + r.getNetRuntime(TimeUnit.MILLISECONDS));
            System.out.println("WALL_MS=" + (end - submit));
        } else {
            JobClient client = env.executeAsync("word count (restored) " + backend + " p=" + parallelism);
            if (!FIRST.await(300, TimeUnit.SECONDS)) {
                System.out.println("NO_FIRST_RECORD");
                System.exit(1);
            }
            System.out.println("FIRST_RECORD_MS=" + firstRecordMs);
            System.out.flush();
            client.cancel().get(60, TimeUnit.SECONDS);
        }
        System.exit(0);
    }
}
