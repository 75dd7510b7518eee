"""The README's example: run one request and print the structure (addresses and key from env)."""

import os

from bitware_client import Client

with Client(
    os.environ["BITWARE_KAM"],
    orchestrator=os.environ["BITWARE_ORCHESTRATOR"],
    granulator=os.environ["BITWARE_GRANULATOR"],
    api_key=os.environ["BITWARE_API_KEY"],
) as client:
    result = client.run("AI Development", type="course", on_event=lambda e: print(e.message))
    for element in result.structure.elements if result.structure else []:
        print(element.kind, element.title)
