"""A minimal OTLP/gRPC sink: answers every export without decoding it (a collector elsewhere)."""
import sys, grpc
from concurrent import futures
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
count = [0]
def export(request: bytes, context):
    count[0] += 1
    return answer
handler = grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(export)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print("sink ready", flush=True)
server.wait_for_termination()
