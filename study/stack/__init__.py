"""The local stack: real servers on 127.0.0.1 (PostgreSQL, an S3 endpoint, MLflow, a Ray head)
for `study stack up|down|status` and for the integration tests. One module per server;
``process`` is what they share, ``local`` puts them together, ``command`` is the command line."""
from study.stack.local import BUCKET, LocalStack
from study.stack.mlflow import MlflowServer
from study.stack.postgres import PostgresServer
from study.stack.process import HOST, Server, free_port, port_in_use, tail, wait_for, write_private
from study.stack.ray import RayHead
from study.stack.s3 import S3Server

__all__ = ["BUCKET", "HOST", "LocalStack", "MlflowServer", "PostgresServer", "RayHead", "S3Server", "Server",
           "free_port", "port_in_use", "tail", "wait_for", "write_private"]
