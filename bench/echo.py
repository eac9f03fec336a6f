"""The HTTP half of the floor: a function that reads the whole body and answers 200.

Served by the same functions-framework CLI as `receive_audio`, so that the gap
between the two is what the function itself adds.
"""

from __future__ import annotations

import flask
import functions_framework


@functions_framework.http
def echo(request: flask.Request) -> tuple[str, int]:
    """Read the body and answer 200 with an empty body.

    Args:
        request: any request.

    Returns:
        An empty 200.
    """
    request.get_data()
    return "", 200
