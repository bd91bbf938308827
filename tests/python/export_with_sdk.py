"""Exports agent spans to runledger with the real OpenTelemetry Python SDK.

Prints, as JSON, every span the SDK exported and the exporter's result for each export, so
that the Rust test can compare the lake with what was really sent.
"""
import argparse
import json
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode


class Recording(SpanExporter):
    """Delegates to the real exporter and remembers what it exported and how it went."""

    def __init__(self, inner):
        self.inner = inner
        self.spans = []
        self.results = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result.name)
        for s in spans:
            ctx = s.get_span_context()
            self.spans.append({
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "parent_span_id": format(s.parent.span_id, "016x") if s.parent else None,
                "name": s.name,
                "kind": s.kind.name.lower(),
                "start_time_unix_nano": s.start_time,
                "end_time_unix_nano": s.end_time,
                "status_code": s.status.status_code.name.lower(),
                "status_message": s.status.description,
                "attributes": {k: v for k, v in s.attributes.items()},
                "events": [e.name for e in s.events],
                "links": len(s.links),
            })
        return result

    def shutdown(self):
        self.inner.shutdown()


def exporter(protocol, endpoint, gzip):
    if protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, insecure=True,
                                compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression)
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=endpoint,
                            compression=Compression.Gzip if gzip else Compression.NoCompression)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args()

    recording = Recording(exporter(args.protocol, args.endpoint, args.gzip))
    provider = TracerProvider(resource=Resource.create({
        "service.name": "refund-service",
        "deployment.environment.name": "test",
    }))
    provider.add_span_processor(SimpleSpanProcessor(recording))
    tracer = provider.get_tracer("runledger.tests", "0.1")

    run = {"runledger.run.id": args.run_id}
    with tracer.start_as_current_span("invoke_agent refund-agent", kind=SpanKind.SERVER, attributes={
        **run,
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "refund-agent",
        "gen_ai.workflow.name": "refunds",
        "enduser.id": "cust-0042",
        "runledger.run.outcome": "escalated",
        "tags": ["vip", "eu"],
    }) as root:
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes={
            **run,
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "gen_ai.usage.reasoning.output_tokens": 100,
            "gen_ai.request.temperature": 0.25,
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "refund order 123 for jane@example.com"}]}]),
        }) as chat:
            chat.add_event("gen_ai.choice", {"index": 0, "finish_reason": "tool_call"})
        with tracer.start_as_current_span("execute_tool issue_refund", links=[Link(root.get_span_context(), {"link.kind": "caused_by"})], attributes={
            **run,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "issue_refund",
            "gen_ai.tool.call.id": "call_abc",
            "runledger.action.side_effect": "write",
            "runledger.retry.attempt": 1,
            "error.type": "CardDeclined",
        }) as tool:
            tool.record_exception(ValueError("card declined"))
            tool.set_status(Status(StatusCode.ERROR, "card declined"))
        with tracer.start_as_current_span("execute_tool issue_refund", attributes={
            **run,
            "gen_ai.tool.name": "issue_refund",
            "runledger.action.side_effect": "write",
            "runledger.action.ref": "re_" + args.run_id,
            "runledger.retry.attempt": 2,
            "runledger.cost.usd": 0.0125,
        }):
            pass
    provider.shutdown()
    print(json.dumps({"results": recording.results, "spans": recording.spans}))
    return 0 if recording.results and all(r == "SUCCESS" for r in recording.results) else 1


if __name__ == "__main__":
    sys.exit(main())
