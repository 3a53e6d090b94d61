"""Anthropic's Messages API (``POST /v1/messages``) as a shape of the one pipeline: :mod:`.convert` maps the
request to the chat request and the completion to a Message, :mod:`.stream` writes Anthropic's event stream,
:mod:`.shape` is the :class:`~unimodel.service.shape.ApiShape` the route serves."""

from unimodel.shapes.messages.shape import MESSAGES, MessagesShape

__all__ = ["MESSAGES", "MessagesShape"]
