"""``llm.chat``: one chat completion from the configured endpoint, as a durable step.

Input ``{messages, model?, temperature?, max_tokens?, stream?}``; with ``stream`` the text
reaches the run's token listeners as it is written (``?tokens=1``). The result is the answer
with its usage: ``{content, message, model, finish_reason, usage, latency_ms}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.agents import agent
from worker.agents.context import AsyncRunContext


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ...

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1, max_length=1000)
    model: str | None = Field(default=None, max_length=200,
                              description="Default: AGENTQ_LLM_MODEL.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = Field(default=False, description="Publish the text as it is written "
                         "(SSE ?tokens=1, WebSocket tokens: true).")


@agent("llm.chat", input_model=ChatInput, timeout_s=300)
async def chat(ctx: AsyncRunContext, input: ChatInput) -> dict[str, Any]:
    """One chat completion from the configured OpenAI-compatible endpoint (awaited on the
    worker's event loop: a worker process holds hundreds of them at once)."""
    params = input.model_dump(exclude={"messages", "model", "stream"}, exclude_none=True)
    messages = [message.model_dump(exclude_none=True) for message in input.messages]
    await ctx.emit("calling", "Asking the model…", messages=len(messages))
    return await ctx.llm.chat(messages, model=input.model, name="chat", stream=input.stream,
                              **params)
