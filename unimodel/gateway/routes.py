"""The route stage (after parse, before validate): which named route a request takes, and that route's
defaults and caps applied to it.

The route is the request's ``route`` field, else its ``X-Unimodel-Route`` header, else a rule: a request with
images takes ``image``, one with tools ``agent``, any other ``default``. A route named explicitly must exist
(else 400, ``param: "route"``) and be one of the key's ``routes`` (else 403); a route picked by the rules that
the key may not use gives way to one the key may use (``default`` if it may, else the first by name), whose
own caps then apply. The route's name goes
into the context and the ``X-Unimodel-Route`` response header; what later stages need of its policy
(:class:`~unimodel.gateway.policy.RoutePolicy`: timeouts and upstreams for the resilience stage, image caps,
the max-tokens cap) goes into ``call.route``, a :class:`~unimodel.service.context.RouteChoice` made once per
route at start-up.

Defaults and caps: a value the client sent beyond a cap is refused with a 400 naming the field (an
OpenAI-style client would rather hear why than get a silently different answer); a default the client did not
override is clamped to the caps. So:

* ``reasoning_effort`` above the route's maximum: 400; absent: the route's default (else the model's),
  lowered to the maximum; a ``thinking_budget`` longer than the maximum's policy allows (it is charged at the
  level it runs at, ``formats/reasoning.py``): 400, ``param: "thinking_budget"``;
* ``max_tokens``/``max_completion_tokens`` above the route's ``max_tokens`` or the key's ``max_tokens_cap``:
  400; absent: the server's default is clamped to the cap (``call.route.max_tokens_cap``, read by the
  validate stage);
* ``temperature`` outside the route's range: 400; absent: the route's ``default_temperature`` if it has one;
* images on a route without images: 400; the route's image caps (count, bytes, pixels) tighten the server's,
  checked by the image stage (``call.route.image_limits``);
* a tool not on the route's or the key's allowlist, or any tool on a route with ``tools: none``: 403 naming
  the tool. (``tool_choice`` naming a tool missing from ``tools`` is refused by the wire model: 400.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Optional

from unimodel.errors import InvalidRequestError, PermissionDeniedError, UnsupportedFeatureError
from unimodel.service.validate import DEFAULT_REASONING
from unimodel.formats.reasoning import ModelReasoning
from unimodel.gateway.images import ImagePolicy
from unimodel.gateway.policy import NAME_PATTERN, RoutePolicy, RouteTimeouts
from unimodel.images.decode import ImageLimits
from unimodel.protocol.effort import NO_THINKING, Effort, effort_rank
from unimodel.protocol.openai import ChatCompletionRequest, ImagePart
from unimodel.service.context import Caller, RouteChoice
from unimodel.service.pipeline import Call, Stage

__all__ = ["ROUTE_HEADER", "RoutePolicy", "RouteStage", "RouteTimeouts", "choose_route"]

ROUTE_HEADER = "X-Unimodel-Route"
_REQUEST_HEADER = ROUTE_HEADER.lower()


def count_images(wire: ChatCompletionRequest) -> int:
    return sum(1 for m in wire.messages if isinstance(m.content, list)
               for part in m.content if isinstance(part, ImagePart))


def choose_route(routes: Mapping[str, RoutePolicy], caller: Caller, asked: Optional[str], has_images: bool,
                 has_tools: bool) -> RoutePolicy:
    """The route for a request: the one ``asked`` for (by field or header), else by the rules."""
    if asked is not None:
        route = routes.get(asked)
        if route is None:
            raise InvalidRequestError(_unknown(asked, routes), param="route", code="route_not_found")
        if caller.routes is not None and asked not in caller.routes:
            raise PermissionDeniedError(
                f"This API key may not use the route '{asked}' (its routes: {', '.join(sorted(caller.routes))}).",
                param="route")
        return route
    pick = "image" if has_images and "image" in routes else "agent" if has_tools and "agent" in routes \
        else "default"
    if caller.routes is not None and pick not in caller.routes:
        allowed = [name for name in sorted(caller.routes) if name in routes]
        if not allowed:
            raise PermissionDeniedError("This API key may not use any route of this server.", param="route")
        pick = "default" if "default" in allowed else allowed[0]
    return routes[pick]


def _unknown(asked: str, routes: Mapping[str, RoutePolicy]) -> str:
    known = ", ".join(routes)
    if re.fullmatch(NAME_PATTERN, asked) is None:
        return f"The route name is not valid (letters, digits and ._-, at most 64); routes: {known}."
    return f"The route '{asked}' does not exist on this server (routes: {known})."


class RouteStage(Stage):
    name = "route"

    def __init__(self, routes: Mapping[str, RoutePolicy], *, image_policy: Optional[ImagePolicy] = None,
                 reasoning_for: Callable[[str], ModelReasoning] = lambda _: DEFAULT_REASONING) -> None:
        if "default" not in routes:
            raise ValueError("the routes need a 'default' route")
        self.routes = dict(routes)
        self.reasoning_for = reasoning_for
        base = image_policy or ImagePolicy()
        self._choices = {name: _choice(route, base.limits) for name, route in self.routes.items()}
        self._tools = {name: None if route.tools == "all" else frozenset(() if route.tools == "none" else route.tools)
                       for name, route in self.routes.items()}

    async def enter(self, call: Call) -> None:
        wire = call.client_request
        if wire is None:
            raise InvalidRequestError("the request was not parsed")
        caller = call.ctx.caller
        asked = wire.route
        if asked is None:
            asked = call.headers.get(_REQUEST_HEADER, "").strip() or None
        images = count_images(wire)
        route = choose_route(self.routes, caller, asked, images > 0, bool(wire.tools))
        call.ctx.route = route.name
        call.response_headers[ROUTE_HEADER] = route.name
        call.route = self._choices[route.name]

        if images and not route.images:
            raise UnsupportedFeatureError(f"The route '{route.name}' does not take images.", param="messages")
        self._check_tools(route, caller, wire)
        updates: dict[str, Any] = {}
        self._effort(route, wire, updates)
        self._max_tokens(route, caller, wire, call)
        self._temperature(route, wire, updates)
        if updates:
            call.client_request = wire.model_copy(update=updates)

    def _check_tools(self, route: RoutePolicy, caller: Caller, wire: ChatCompletionRequest) -> None:
        if not wire.tools:
            return
        allowed = self._tools[route.name]
        for tool in wire.tools:
            name = tool.function.name
            if allowed is not None and name not in allowed:
                where = "takes no tools" if not allowed else "does not allow it"
                raise PermissionDeniedError(f"The tool '{name}' is not allowed: the route '{route.name}' {where}.",
                                            param="tools")
            if caller.allowed_tools is not None and name not in caller.allowed_tools:
                raise PermissionDeniedError(f"The tool '{name}' is not allowed for this API key.", param="tools")

    def _effort(self, route: RoutePolicy, wire: ChatCompletionRequest, updates: dict[str, Any]) -> None:
        ceiling = route.max_reasoning_effort
        if wire.reasoning_effort is not None:
            if ceiling is not None and effort_rank(wire.reasoning_effort) > effort_rank(ceiling):
                raise InvalidRequestError(
                    f"reasoning_effort '{wire.reasoning_effort}' is above the route '{route.name}''s maximum, "
                    f"'{ceiling}'.", param="reasoning_effort")
        else:
            default = route.default_reasoning_effort
            if ceiling is not None:
                default = default or self.reasoning_for(wire.model).default_effort
                if effort_rank(default) > effort_rank(ceiling):
                    default = ceiling
            if default is not None:
                updates["reasoning_effort"] = default
        if ceiling is not None and wire.thinking_budget is not None:
            self._budget(route, ceiling, wire, updates.get("reasoning_effort", wire.reasoning_effort))

    def _budget(self, route: RoutePolicy, ceiling: Effort, wire: ChatCompletionRequest,
                effort: Optional[Effort]) -> None:
        """A ``thinking_budget`` that makes the model think longer than the route's ``max_reasoning_effort``
        allows is refused like an effort above it: the budget is charged at the level it runs at."""
        reasoning = self.reasoning_for(wire.model)
        applied = reasoning.apply(effort, wire.thinking_budget)  # on a level that does not think: validate's 400
        if effort_rank(applied.charged) <= effort_rank(ceiling):
            return
        most = reasoning.largest_budget(applied.model_effort or NO_THINKING, ceiling)
        raise InvalidRequestError(
            f"thinking_budget ({wire.thinking_budget}) is above what the route '{route.name}''s maximum reasoning "
            f"effort, '{ceiling}', allows ({most} thinking tokens at most).", param="thinking_budget")

    def _max_tokens(self, route: RoutePolicy, caller: Caller, wire: ChatCompletionRequest, call: Call) -> None:
        caps = [(cap, who) for cap, who in ((route.max_tokens, f"the route '{route.name}'"),
                                            (caller.max_tokens_cap, "this API key")) if cap is not None]
        if not caps:
            return
        cap, who = min(caps, key=lambda c: c[0])
        for field in ("max_completion_tokens", "max_tokens"):
            value = getattr(wire, field)
            if value is not None and value > cap:
                raise InvalidRequestError(f"{field} ({value}) is above the cap of {cap} tokens set by {who}.",
                                          param=field)
        if cap != route.max_tokens:  # the key's cap is the lower one
            call.route = dataclasses.replace(self._choices[route.name], max_tokens_cap=cap)

    def _temperature(self, route: RoutePolicy, wire: ChatCompletionRequest, updates: dict[str, Any]) -> None:
        value = wire.temperature
        if value is None:
            if route.default_temperature is not None:
                updates["temperature"] = route.default_temperature
            return
        low, high = route.min_temperature, route.max_temperature
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{'0' if low is None else f'{low:g}'}..{'2' if high is None else f'{high:g}'}"
            raise InvalidRequestError(f"temperature ({value:g}) is outside the route '{route.name}''s range, "
                                      f"{span}.", param="temperature")


def _choice(route: RoutePolicy, server_limits: ImageLimits) -> RouteChoice:
    """What later stages need of a route: its upstreams, timeouts, image caps (tightening the server's) and
    max-tokens cap."""
    def lower(mine: Optional[int], theirs: int) -> int:
        return theirs if mine is None else min(mine, theirs)

    limits = None if not route.has_image_caps else ImageLimits(
        max_bytes=lower(route.max_image_bytes, server_limits.max_bytes),
        max_pixels=lower(route.max_image_pixels, server_limits.max_pixels),
        max_images=lower(route.max_images, server_limits.max_images))
    t = route.timeouts
    return RouteChoice(name=route.name, upstreams=tuple(route.upstreams) if route.upstreams else None,
                       connect_timeout_s=t.connect_s, first_token_timeout_s=t.first_token_s, total_timeout_s=t.total_s,
                       image_limits=limits, max_tokens_cap=route.max_tokens)
