# Python multilang bolt: a sentence from the Kafka spout (fields topic, partition, offset, key,
# value) becomes one tuple per word: (word, uid). The uid names the word's place in the input
# (partition:offset:position), so a replayed sentence is not counted twice downstream.
import storm


class SplitSentence(storm.BasicBolt):
    def process(self, tup):
        _topic, partition, offset, _key, value = tup.values
        for i, word in enumerate((value or "").split()):
            storm.emit([word.lower(), "%s:%s:%d" % (partition, offset, i)])


SplitSentence().run()
