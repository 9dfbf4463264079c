# Python multilang bolt: counts each word (the stream is grouped by word, so one instance sees
# all of a word's tuples) and emits (key=word, message=count) on every new occurrence; a uid seen
# before (a replay) changes nothing.
import storm


class CountWords(storm.BasicBolt):
    def initialize(self, conf, context):
        self.seen = {}

    def process(self, tup):
        word, uid = tup.values
        uids = self.seen.setdefault(word, set())
        if uid not in uids:
            uids.add(uid)
            storm.emit([word, str(len(uids))])


CountWords().run()
