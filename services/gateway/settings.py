"""Gateway settings (``SWITCHYARD_GATEWAY__*``)."""

from pydantic import Field

from shared.settings import Section


class GatewaySettings(Section):
    """HTTP front door."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    default_timeout_s: float = Field(120.0, gt=0, description="deadline of a request that names none")
    max_timeout_s: float = Field(600.0, gt=0, description="the longest deadline a client may ask for")
    job_timeout_s: float = Field(600.0, gt=0, description="deadline of an async job")
    max_in_flight: int = Field(10_000, ge=1, description="synchronous and streamed requests one gateway waits on "
                                                          "at once; more get 503 with Retry-After (jobs queue)")
    max_queued_jobs: int = Field(25_000, ge=0, description="async jobs one tenant may have accepted and unfinished; "
                                 "more get 429 with Retry-After, not accepted (0: no cap)")
    max_queued_bytes: int = Field(1024**3, ge=0, description="bytes of those jobs' requests one tenant may have "
                                  "queued; more get 429 with Retry-After, not accepted (0: no cap)")
    max_file_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="the largest file POST /v1/files takes "
                                "(a batch's input JSONL); larger get 413")
    max_batch_lines: int = Field(10_000, ge=1, description="requests (lines) one batch input file may hold")
    batch_resume_after_s: float = Field(30.0, gt=0, description="a batch whose submission made no progress for "
                                        "this long (its gateway died) is resumed by the next gateway that reads it")
