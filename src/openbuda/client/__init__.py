"""The Python SDK of the openbuda HTTP API (API.md).

::

    from openbuda.client import Client

    with Client() as client:  # OPENBUDA_URL / OPENBUDA_API_KEY, else credentials.json
        agent = client.agents.create("helper", instructions="Be brief.")
        session = client.sessions.create(agent.id, title="first")
        accepted = client.sessions.send(session.id, "What is 2 + 2?")
        with client.sessions.stream(session.id, until_idle=True) as events:
            for event in events:
                if event.type == "text.delta":
                    print(event.data["text"], end="")
        task = client.tasks.get(accepted.task_id)
        print(task.status, task.result)

``client.computer`` reaches an agent's computer: ``status``, ``exec``, ``exec_stream`` (live
output), ``sleep``/``wake``/``restart`` and ``preview_link`` (a signed URL for a browser).

``client.drive`` reaches the Space Drive and, with ``agent_id=``, an agent's Drive: ``list``,
``read``, ``iter_bytes``, ``download`` (streamed to a file, its sha256 checked), ``write``
(bytes or a file object, streamed), ``delete``, ``history``, ``diff`` and ``restore``;
``client.sessions.save`` keeps a session's transcript there.

``AsyncClient`` has the same namespaces with ``await`` (and ``async with`` / ``async for`` for
streams). Both take ``transport=`` (``httpx.ASGITransport(app)``, ``httpx.MockTransport``) for
tests.

Errors: an error answer raises the ``openbuda.domain.errors`` class of its code (``NotFound``,
``SessionBusy``, …), which is also an ``ApiError`` carrying ``status``, ``code``, ``message`` and
``details``; ``ConnectionFailed`` when the server cannot be reached; ``InvalidResponse`` for an answer
the SDK cannot read; ``MissingCredentials`` when no API key was found.
"""

from openbuda.client._async import (
    AsyncAgents,
    AsyncApiKeys,
    AsyncClient,
    AsyncEventStream,
    AsyncSessions,
    AsyncSpaces,
    AsyncTasks,
)
from openbuda.client._calls import OnBusy
from openbuda.client._computer import (
    AsyncComputer,
    AsyncExecStream,
    Computer,
    ExecItem,
    ExecStream,
)
from openbuda.client._config import DEFAULT_URL
from openbuda.client._drive import (
    AsyncDrive,
    AsyncDriveBytes,
    Drive,
    DriveBytes,
    DriveName,
    UploadData,
)
from openbuda.client._errors import (
    ApiError,
    ConnectionFailed,
    InvalidResponse,
    MissingCredentials,
)
from openbuda.client._models import (
    Agent,
    AgentLimits,
    AgentSettings,
    ApiKey,
    ComputerStatus,
    DriveDiff,
    DriveDownload,
    DriveEntry,
    DriveVersion,
    Event,
    ExecOutput,
    ExecResult,
    Health,
    HistoryMessage,
    Me,
    Member,
    Message,
    MessageAccepted,
    Page,
    PreviewLink,
    Question,
    Session,
    Space,
    SpaceCreated,
    Task,
    TaskError,
    TaskResult,
)
from openbuda.client._patch import NOT_GIVEN, NotGiven
from openbuda.client._stream import StreamPolicy
from openbuda.client._sync import Agents, ApiKeys, Client, EventStream, Sessions, Spaces, Tasks

__all__ = [
    "DEFAULT_URL",
    "NOT_GIVEN",
    "Agent",
    "AgentLimits",
    "AgentSettings",
    "Agents",
    "ApiError",
    "ApiKey",
    "ApiKeys",
    "AsyncAgents",
    "AsyncApiKeys",
    "AsyncClient",
    "AsyncComputer",
    "AsyncDrive",
    "AsyncDriveBytes",
    "AsyncEventStream",
    "AsyncExecStream",
    "AsyncSessions",
    "AsyncSpaces",
    "AsyncTasks",
    "Client",
    "Computer",
    "ComputerStatus",
    "ConnectionFailed",
    "Drive",
    "DriveBytes",
    "DriveDiff",
    "DriveDownload",
    "DriveEntry",
    "DriveName",
    "DriveVersion",
    "Event",
    "EventStream",
    "ExecItem",
    "ExecOutput",
    "ExecResult",
    "ExecStream",
    "Health",
    "HistoryMessage",
    "InvalidResponse",
    "Me",
    "Member",
    "Message",
    "MessageAccepted",
    "MissingCredentials",
    "NotGiven",
    "OnBusy",
    "Page",
    "PreviewLink",
    "Question",
    "Session",
    "Sessions",
    "Space",
    "SpaceCreated",
    "Spaces",
    "StreamPolicy",
    "Task",
    "TaskError",
    "TaskResult",
    "Tasks",
    "UploadData",
]
