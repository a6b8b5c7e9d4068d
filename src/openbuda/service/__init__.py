"""Use-cases: each owns its transaction and the lifecycle rules it applies."""

from openbuda.service.agents import AgentService
from openbuda.service.computer import ComputerService
from openbuda.service.deps import ServiceDeps
from openbuda.service.drive import DriveService
from openbuda.service.sessions import MessageAccepted, SessionService
from openbuda.service.tasks import Answer, TaskService

__all__ = [
    "AgentService",
    "Answer",
    "ComputerService",
    "DriveService",
    "MessageAccepted",
    "ServiceDeps",
    "SessionService",
    "TaskService",
]
