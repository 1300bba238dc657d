// Large inputs go as a resumable upload (tus 1.0, with the vendored tus-js-client) before the job is submitted with
// `input_upload`: a dropped connection resumes from the offset the server reports instead of starting over, and in
// production the bytes go straight to Supabase Storage with the one-object authorization POST /v1/uploads hands out.

import { authHeaders, post } from "./api.js";

const LOCAL_CHUNK_BYTES = 8 * 1024 * 1024; // per PATCH to this API (Storage sets its own part size)
let loaded = null;

function loadTus() {
  loaded ||= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "/studio/vendor/tus.min.js";
    script.onload = () => resolve(window.tus);
    script.onerror = () => reject(new Error("could not load the upload library"));
    document.head.append(script);
  });
  return loaded;
}

// Upload `file`; onProgress(sent, total). Resolves with the upload's id.
export async function uploadResumable(file, onProgress) {
  const tus = await loadTus();
  const created = await post("/v1/uploads", {
    filename: file.name || "input",
    size: file.size,
    content_type: file.type || "application/octet-stream",
  });
  const options = {
    retryDelays: [0, 1000, 3000, 5000, 10000],
    storeFingerprintForResuming: false, // each upload has its own authorization: never resume another one
    onProgress,
  };
  if (created.tus) {
    Object.assign(options, {
      endpoint: created.tus.endpoint,
      headers: created.tus.headers,
      metadata: created.tus.metadata,
      chunkSize: created.tus.chunk_size,
    });
  } else {
    // Local mode: the API created the upload already; tus-js-client starts with HEAD on its URL.
    Object.assign(options, { uploadUrl: created.upload_url, headers: authHeaders(), chunkSize: LOCAL_CHUNK_BYTES });
  }
  await new Promise((resolve, reject) => {
    new tus.Upload(file, { ...options, onSuccess: resolve, onError: reject }).start();
  });
  return created.id;
}
