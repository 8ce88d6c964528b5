"""Decodes OTLP/HTTP JSON metric exports with the official OpenTelemetry protobuf definitions
(PyPI `opentelemetry-proto`), strictly: an unknown field, a wrong type or a bad enum fails.

Usage: python otlp_check.py FILE  (FILE: a JSON array of export bodies, each a JSON string)
Prints one JSON object: {"ok": bool, "detail": str, "metrics": {name: [kind, points, temporality]},
"sums": {"name|k=v,k=v": value}} — the sums summed over every export, for the caller to assert on.
"""

import json
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest


def main():
    bodies = json.load(open(sys.argv[1]))
    metrics, sums = {}, {}
    try:
        for body in bodies:
            req = json_format.Parse(body, ExportMetricsServiceRequest(), ignore_unknown_fields=False)
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        data = getattr(m, kind)
                        metrics[m.name] = [kind, len(data.data_points), int(getattr(data, "aggregation_temporality", 0))]
                        if kind == "sum":
                            for p in data.data_points:
                                attrs = ",".join(f"{a.key}={a.value.string_value}" for a in p.attributes)
                                key = f"{m.name}|{attrs}"
                                sums[key] = sums.get(key, 0) + p.as_int
                        if kind == "histogram":
                            for p in data.data_points:
                                assert sum(p.bucket_counts) == p.count, f"{m.name}: buckets do not add up to the count"
                                assert len(p.bucket_counts) == len(p.explicit_bounds) + 1, f"{m.name}: bucket and bound counts"
                                assert p.start_time_unix_nano <= p.time_unix_nano
        print(json.dumps({"ok": True, "detail": f"{len(bodies)} exports", "metrics": metrics, "sums": sums}))
    except Exception as e:  # noqa: BLE001 - the node test reports it
        print(json.dumps({"ok": False, "detail": f"{type(e).__name__}: {e}", "metrics": metrics, "sums": sums}))


main()
