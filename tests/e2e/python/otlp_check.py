"""Decodes OTLP/HTTP JSON exports (metrics and traces) with the official OpenTelemetry protobuf
definitions (PyPI `opentelemetry-proto`), strictly: an unknown field, a wrong type or a bad enum
fails. Trace and span ids are hex in OTLP/JSON (the one departure from protobuf's JSON mapping,
which expects base64): they are checked to be 32 and 16 hex digits and converted, as collectors do.

Usage: python otlp_check.py FILE  (FILE: a JSON array of export bodies, each a JSON string)
Prints one JSON object: {"ok", "detail", "metrics": {name: [kind, points, temporality]},
"sums": {"name|k=v,k=v": value}, "spans": [{"name", "trace_id", "span_id", "parent_span_id", "kind"}]}.
"""

import base64
import json
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ID_LENGTHS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def hex_ids_to_base64(value):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ID_LENGTHS and isinstance(v, str):
                assert len(v) == ID_LENGTHS[k] and all(c in "0123456789abcdef" for c in v), f"{k} {v!r} is not {ID_LENGTHS[k]} hex digits"
                out[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                out[k] = hex_ids_to_base64(v)
        return out
    if isinstance(value, list):
        return [hex_ids_to_base64(v) for v in value]
    return value


def metrics_of(body, metrics, sums):
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


def spans_of(body, spans):
    req = json_format.Parse(json.dumps(hex_ids_to_base64(json.loads(body))), ExportTraceServiceRequest(), ignore_unknown_fields=False)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                assert s.start_time_unix_nano <= s.end_time_unix_nano, s.name
                spans.append({"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                              "parent_span_id": s.parent_span_id.hex(), "kind": int(s.kind),
                              "attributes": {a.key: json_format.MessageToDict(a.value) for a in s.attributes}})


def main():
    bodies = json.load(open(sys.argv[1]))
    metrics, sums, spans = {}, {}, []
    try:
        for body in bodies:
            if "resourceSpans" in json.loads(body):
                spans_of(body, spans)
            else:
                metrics_of(body, metrics, sums)
        print(json.dumps({"ok": True, "detail": f"{len(bodies)} exports", "metrics": metrics, "sums": sums, "spans": spans}))
    except Exception as e:  # noqa: BLE001 - the node test reports it
        print(json.dumps({"ok": False, "detail": f"{type(e).__name__}: {e}", "metrics": metrics, "sums": sums, "spans": spans}))


main()
