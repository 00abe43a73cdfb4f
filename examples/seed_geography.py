"""The seed example ("Use DBOS With Pydantic AI"), on perdure: only the import lines and the launch changed.

    pip install 'perdure[pydantic-ai]' 'pydantic-ai-slim[openai]'
    export OPENAI_API_KEY=sk-...
    python examples/seed_geography.py

It runs `openai:gpt-5`, so it needs the `openai` package and OPENAI_API_KEY. To run it offline, set
PERDURE_EXAMPLE_MODEL=test (a `TestModel` that answers like the seed's comment) or any other pydantic-ai
model string. The run is durable on SQLite: `perdure --database-url sqlite:///perdure.sqlite workflows list`
shows it, and `perdure workflows steps <id>` its checkpointed model requests.
"""

import asyncio
import os

from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from perdure import Perdure
from perdure.pydantic_ai import DurableAgent

model = os.environ.get("PERDURE_EXAMPLE_MODEL", "openai:gpt-5")

agent = Agent(
    TestModel(custom_output_text="Mexico City (Ciudad de México, CDMX)") if model == "test" else model,
    instructions="You're an expert in geography.",
    name="geography",
)

durable_agent = DurableAgent(agent)


async def main():
    async with Perdure("sqlite:///perdure.sqlite"):
        result = await durable_agent.run("What is the capital of Mexico?")
        print(result.output)
        # > Mexico City (Ciudad de México, CDMX)


if __name__ == "__main__":
    asyncio.run(main())
