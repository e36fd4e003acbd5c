"""The client side: Client, AsyncClient, Job handles. Never imports workers or torch."""

from producers.async_client import AsyncClient, AsyncJob
from producers.client import Client
from producers.job import Job

__all__ = ["AsyncClient", "AsyncJob", "Client", "Job"]
