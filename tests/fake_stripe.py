"""A local stand-in for Stripe's HTTP API and its webhook signing, for billing tests.

`FakeStripe` is a real HTTP server on 127.0.0.1 (stdlib, in a thread) that answers `POST /v1/checkout/sessions`
the way Stripe does: form-encoded parameters, Bearer secret key, idempotency keys (same key + same body = the
same session; same key + another body = 400 idempotency_error). `sign` builds the `Stripe-Signature` header
exactly as Stripe does, and the `*_event` helpers build event payloads with Stripe's field names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    form: dict[str, str]


@dataclass
class FakeStripe:
    secret_key: str
    requests: list[ReceivedRequest] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _idempotent: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ReceivedRequest(
                    "POST",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    raw,
                    dict(parse_qsl(raw.decode(), keep_blank_values=True)),
                )
                status, body = fake._handle(request)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
                if "idempotency-key" in request.headers:
                    self.send_header("Idempotency-Key", request.headers["idempotency-key"])
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, request: ReceivedRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(request)
            if request.headers.get("authorization") != f"Bearer {self.secret_key}":
                return 401, _error("invalid_request_error", "Invalid API Key provided.")
            if request.path != "/v1/checkout/sessions":
                return 404, _error("invalid_request_error", f"Unrecognized request URL (POST: {request.path}).")
            key = request.headers.get("idempotency-key")
            if key in self._idempotent:
                first_body, first_response = self._idempotent[key]
                if first_body != request.raw_body:
                    return 400, _error(
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        "used with.",
                    )
                return 200, first_response
            session = checkout_session(request.form)
            self.sessions[session["id"]] = session
            if key is not None:
                self._idempotent[key] = (request.raw_body, session)
            return 200, session


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def checkout_session(form: dict[str, str]) -> dict[str, Any]:
    """A `checkout.session` as Stripe returns it on create (status open, unpaid), from the form parameters."""
    session_id = f"cs_test_{secrets.token_hex(24)}"
    created = int(time.time())
    amount = int(form["line_items[0][price_data][unit_amount]"]) * int(form["line_items[0][quantity]"])
    metadata = {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")}
    return {
        "id": session_id,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": amount,
        "amount_total": amount,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": form.get("cancel_url"),
        "client_reference_id": form.get("client_reference_id"),
        "client_secret": None,
        "consent": None,
        "created": created,
        "currency": form["line_items[0][price_data][currency]"],
        "customer": None,
        "customer_creation": "if_required",
        "customer_details": None,
        "customer_email": form.get("customer_email"),
        "expires_at": created + 24 * 3600,
        "invoice": None,
        "livemode": False,
        "locale": None,
        "metadata": metadata,
        "mode": form["mode"],
        "payment_intent": None,
        "payment_link": None,
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "status": "open",
        "success_url": form.get("success_url"),
        "ui_mode": "hosted",
        "url": f"https://checkout.stripe.com/c/pay/{session_id}#fid{secrets.token_hex(8)}",
    }


# ---- webhook events ----


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature`: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload" keyed by the whole whsec_ secret>."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }


def completed_session(
    session: dict[str, Any], *, payment_status: str = "paid", payment_intent: str | None = None
) -> dict[str, Any]:
    """The session as `checkout.session.completed` (or `async_payment_*`) carries it after the customer paid."""
    return {
        **session,
        "status": "complete",
        "payment_status": payment_status,
        "payment_intent": payment_intent or f"pi_{secrets.token_hex(12)}",
        "customer_details": {"email": session.get("customer_email"), "name": "Alice Example", "tax_exempt": "none"},
    }


def refunded_charge(
    payment_intent: str,
    amount: int,
    refunds: list[tuple[str, int, int]],
    *,
    charge_id: str = "ch_3Qfake0000000000",
    embed_refunds: bool = True,
) -> dict[str, Any]:
    """A charge as `charge.refunded` carries it; `refunds` is [(refund id, amount, created)], all refunds so far.
    Since API version 2022-11-15 Stripe no longer embeds `refunds` in charges: `embed_refunds=False`."""
    refunded = sum(refund_amount for _, refund_amount, _ in refunds)
    charge: dict[str, Any] = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": refunded,
        "captured": True,
        "currency": "usd",
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": refunded >= amount,
        "status": "succeeded",
    }
    if embed_refunds:
        data = [
            {
                "id": refund_id,
                "object": "refund",
                "amount": refund_amount,
                "charge": charge_id,
                "created": created,
                "currency": "usd",
                "payment_intent": payment_intent,
                "status": "succeeded",
            }
            for refund_id, refund_amount, created in sorted(refunds, key=lambda r: r[2], reverse=True)
        ]
        charge["refunds"] = {
            "object": "list",
            "data": data,
            "has_more": False,
            "total_count": len(data),
            "url": f"/v1/charges/{charge_id}/refunds",
        }
    return charge


def dispute(
    payment_intent: str,
    amount: int,
    *,
    status: str = "needs_response",
    dispute_id: str = "dp_1Qfake0000000000",
    charge_id: str = "ch_3Qfake0000000000",
    created: int | None = None,
) -> dict[str, Any]:
    """A Dispute as `charge.dispute.created` / `charge.dispute.closed` carry it (stripe-python's `Dispute` fields;
    `closed` has status won, lost, warning_closed or prevented)."""
    created = int(time.time()) if created is None else created
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge_id,
        "created": created,
        "currency": "usd",
        "enhanced_eligibility_types": [],
        "evidence": {"customer_email_address": None, "product_description": None, "uncategorized_text": None},
        "evidence_details": {
            "due_by": created + 7 * 86400,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "network_reason_code": "10.4",
        "payment_intent": payment_intent,
        "payment_method_details": {"card": {"brand": "visa", "network_reason_code": "10.4"}, "type": "card"},
        "reason": "fraudulent",
        "status": status,
    }
