"""Parse a /metrics text with prometheus_client's own parser (a malformed line raises) and print
every sample as JSON: [name, labels, value]. Usage: python parse_metrics.py FILE"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"families": len(samples) and len({s[0] for s in samples}), "samples": samples}))
