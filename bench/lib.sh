# Shared by the benchmark scripts: replace (or append) one section of BENCHMARKS.md.
# usage: write_section NAME TEXT   (TEXT already wrapped in <!-- NAME:begin/end --> markers)
write_section() {
    python3 - "$1" "$2" <<'PY'
import re, sys
name, section = sys.argv[1], sys.argv[2]
text = open("BENCHMARKS.md").read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if begin in text:
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda m: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open("BENCHMARKS.md", "w").write(text)
PY
}
