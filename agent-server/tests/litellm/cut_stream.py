"""A LiteLLM custom provider for the compatibility test: the proxy stops in the middle of a
streamed answer.

The first streamed request (no marker file yet) sends one piece of the answer and then kills the
proxy process, so the client sees its connection cut mid-stream. Once the test has started the
proxy again, every request is answered in full. The marker file is named by LITELLM_CUT_MARKER.
"""

import asyncio
import os
import signal

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

PLAN = os.environ.get("LITELLM_CUT_PLAN", '{"summary": "", "steps": []}')


def _usage():
    return {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}


class CutStream(CustomLLM):
    async def acompletion(self, *args, **kwargs):
        return litellm.completion(
            model="openai/cut", messages=[{"role": "user", "content": "x"}], mock_response=PLAN
        )

    async def astreaming(self, *args, **kwargs):
        marker = os.environ["LITELLM_CUT_MARKER"]
        first = not os.path.exists(marker)
        half = len(PLAN) // 2
        yield GenericStreamingChunk(
            text=PLAN[:half], is_finished=False, finish_reason="", usage=None, index=0
        )
        if first:
            with open(marker, "w") as f:
                f.write("cut\n")
            # Let the first piece reach the client, then stop the whole proxy at once.
            await asyncio.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        yield GenericStreamingChunk(
            text=PLAN[half:], is_finished=True, finish_reason="stop", usage=_usage(), index=0
        )


cut_stream = CutStream()
