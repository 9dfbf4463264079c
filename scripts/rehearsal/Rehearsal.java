// make e2e's producer and reader for the rolling-update rehearsal: Kafka's own Java client (the
// kafka-clients jar of the fixture's Kafka), run by the test as a process of its own, not by
// imgbuild. Single-file source: `java -cp 'LIBS/*' Rehearsal.java MODE CONFIG TOPIC OUT`.
//
//   produce: numbered messages (key and value "N"), acks=all, idempotent, one every 50 ms until
//            SIGTERM; one line per message as it is acknowledged or refused:
//            `ack N SEND_MS ACK_MS PARTITION OFFSET` or `err N SEND_MS ACK_MS EXCEPTION`.
//   read:    every message of TOPIC from the beginning to the end offsets seen at the start:
//            one line `N` per record (duplicates kept), then `end COUNT`.
//   probe:   a round trip: COUNT (4th argument) messages with acks=all, then read back: `probe ok`.
import java.io.FileInputStream;
import java.io.PrintStream;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Rehearsal {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        try (FileInputStream in = new FileInputStream(a[1])) {
            p.load(in);
        }
        String topic = a[2];
        switch (a[0]) {
            case "produce" -> produce(p, topic, new PrintStream(a[3]));
            case "read" -> read(p, topic, new PrintStream(a[3]));
            case "probe" -> probe(p, topic, Integer.parseInt(a[3]));
            default -> throw new IllegalArgumentException("mode: produce, read or probe");
        }
    }

    static KafkaProducer<String, String> producer(Properties base) {
        Properties p = new Properties();
        p.putAll(base);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "120000");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        return new KafkaProducer<>(p);
    }

    static void produce(Properties base, String topic, PrintStream out) throws Exception {
        AtomicBoolean stop = new AtomicBoolean(false);
        Thread main = Thread.currentThread();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stop.set(true);
            try {
                main.join(150000);
            } catch (InterruptedException e) {
                // exiting anyway
            }
        }));
        try (KafkaProducer<String, String> prod = producer(base)) {
            long next = System.currentTimeMillis();
            for (long n = 0; !stop.get(); n++) {
                final long num = n;
                final long sent = System.currentTimeMillis();
                prod.send(new ProducerRecord<>(topic, Long.toString(n), Long.toString(n)), (md, e) -> {
                    long now = System.currentTimeMillis();
                    synchronized (out) {
                        if (e == null) {
                            out.printf("ack %d %d %d %d %d%n", num, sent, now, md.partition(), md.offset());
                        } else {
                            out.printf("err %d %d %d %s%n", num, sent, now, e.getClass().getSimpleName());
                        }
                    }
                });
                next += 50;
                long wait = next - System.currentTimeMillis();
                if (wait > 0) {
                    Thread.sleep(wait);
                }
            }
            prod.flush();
        }
        out.flush();
    }

    static KafkaConsumer<String, String> consumer(Properties base) {
        Properties p = new Properties();
        p.putAll(base);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        return new KafkaConsumer<>(p);
    }

    /** Every value of `topic` from the beginning to the end offsets of the start. */
    static List<String> readAll(Properties base, String topic) {
        List<String> got = new ArrayList<>();
        try (KafkaConsumer<String, String> c = consumer(base)) {
            List<TopicPartition> parts = new ArrayList<>();
            c.partitionsFor(topic, Duration.ofSeconds(60)).forEach(i -> parts.add(new TopicPartition(topic, i.partition())));
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts, Duration.ofSeconds(60));
            long deadline = System.currentTimeMillis() + 120000;
            while (System.currentTimeMillis() < deadline) {
                boolean done = true;
                for (TopicPartition tp : parts) {
                    if (c.position(tp, Duration.ofSeconds(30)) < end.get(tp)) {
                        done = false;
                    }
                }
                if (done) {
                    return got;
                }
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofSeconds(2))) {
                    if (r.offset() < end.get(new TopicPartition(r.topic(), r.partition()))) {
                        got.add(r.value());
                    }
                }
            }
            throw new IllegalStateException("not at the end offsets " + end + " after 120 s");
        }
    }

    static void read(Properties base, String topic, PrintStream out) {
        List<String> got = readAll(base, topic);
        got.forEach(out::println);
        out.println("end " + got.size());
        out.flush();
    }

    static void probe(Properties base, String topic, int count) throws Exception {
        String tag = "probe-" + System.currentTimeMillis() + "-";
        try (KafkaProducer<String, String> prod = producer(base)) {
            for (int i = 0; i < count; i++) {
                prod.send(new ProducerRecord<>(topic, tag + i, tag + i)).get();
            }
        }
        Set<String> seen = new HashSet<>(readAll(base, topic));
        for (int i = 0; i < count; i++) {
            if (!seen.contains(tag + i)) {
                throw new IllegalStateException("acknowledged " + tag + i + " not read back");
            }
        }
        System.out.println("probe ok: " + count + " acknowledged with acks=all and read back");
    }
}
