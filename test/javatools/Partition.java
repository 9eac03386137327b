/*
 * Partition: the partition the Apache Kafka Java producer picks for a keyed
 * record, computed by the client's own code (BuiltInPartitioner.partitionForKey,
 * i.e. toPositive(murmur2(keyBytes)) % numPartitions), so Go tests can check
 * that the gateway co-partitions with Java clients (Kafka Streams, ksqlDB).
 *
 * Run with the Kafka jars that scripts/kafka.sh fetches (Java 11+ single-file
 * source launch):
 *
 *   java -cp "$(scripts/kafka.sh classpath)" test/javatools/Partition.java NUM_PARTITIONS KEY [KEY...]
 *
 * With no KEY arguments the keys are read from stdin, one per line. Keys are
 * encoded as UTF-8, as the StringSerializer does. Prints one line per key:
 * KEY<TAB>PARTITION. Exit status 2 on bad arguments.
 */

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;

import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;

public class Partition {
    public static void main(String[] args) throws IOException {
        if (args.length < 1) {
            usage("missing NUM_PARTITIONS");
        }
        int numPartitions = 0;
        try {
            numPartitions = Integer.parseInt(args[0]);
        } catch (NumberFormatException e) {
            usage("NUM_PARTITIONS is not a number: " + args[0]);
        }
        if (numPartitions < 1) {
            usage("NUM_PARTITIONS must be at least 1: " + args[0]);
        }
        StringBuilder out = new StringBuilder();
        if (args.length > 1) {
            for (int i = 1; i < args.length; i++) {
                line(out, args[i], numPartitions);
            }
        } else {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            for (String key; (key = in.readLine()) != null; ) {
                line(out, key, numPartitions);
            }
        }
        System.out.print(out);
        System.out.flush();
    }

    private static void line(StringBuilder out, String key, int numPartitions) {
        byte[] bytes = key.getBytes(StandardCharsets.UTF_8);
        // The producer's own code path for a keyed record with no partitioner set.
        int partition = BuiltInPartitioner.partitionForKey(bytes, numPartitions);
        // Cross-check against the documented formula, so a change in the client is noticed.
        int formula = Utils.toPositive(Utils.murmur2(bytes)) % numPartitions;
        if (partition != formula) {
            throw new IllegalStateException("BuiltInPartitioner.partitionForKey(" + key + ") = " + partition
                    + " but toPositive(murmur2) % n = " + formula);
        }
        out.append(key).append('\t').append(partition).append('\n');
    }

    private static void usage(String problem) {
        System.err.println("Partition: " + problem);
        System.err.println("usage: java -cp \"$(scripts/kafka.sh classpath)\" test/javatools/Partition.java NUM_PARTITIONS [KEY...]");
        System.err.println("       (no KEY: keys are read from stdin, one per line)");
        System.exit(2);
    }
}
