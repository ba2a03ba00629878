"use strict";
(() => {
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const base = "/pays/cashier/" + encodeURIComponent(body.dataset.orderId);
  // the token goes in a header, never in a URL: URLs end up in access logs
  const auth = { "X-Cashier-Token": body.dataset.token };
  const POLL_MS = 1500;
  const TEXT = {
    pending: "等待支付 Waiting for payment",
    success: "支付成功 Paid",
    refunded: "已退款 Refunded",
    closed: "订单已关闭 Closed",
    failed: "支付失败 Payment failed",
  };
  const FINAL = {
    refunded: "此订单已退款 This order was refunded",
    closed: "订单已关闭 This order is closed",
    failed: "支付失败 The payment failed",
  };
  const narrow = window.matchMedia("(max-width: 600px)").matches && "ontouchstart" in window;
  let mode = body.dataset.mobile === "1" || narrow ? "mobile" : "pc";
  let chosen = null;
  let request = 0;
  let done = false;

  function showMode() {
    $("mode-toggle").textContent = mode === "pc" ? "在本机支付 Pay on this phone" : "显示二维码 Show the QR code";
  }

  function error(message) {
    $("error").textContent = message || "";
    $("error").hidden = !message;
  }

  function render(status, payTime) {
    if (done) return;
    const el = $("status");
    el.dataset.status = status;
    body.dataset.status = status;
    el.textContent = TEXT[status] || status;
    if (status === "pending") return;
    done = true;
    $("pay-view").hidden = true;
    if (status === "success") {
      if (payTime) $("pay-time").textContent = new Date(payTime).toLocaleString();
      $("paid-view").hidden = false;
    } else {
      $("closed-text").textContent = FINAL[status] || TEXT[status] || status;
      $("closed-view").hidden = false;
    }
  }

  async function prepare() {
    if (!chosen || done) return;
    const mine = ++request;
    error("");
    $("qr-view").hidden = true;
    $("mobile-view").hidden = true;
    $("working").hidden = false;
    let data = null;
    let failure = "";
    try {
      const response = await fetch(base + "/pay", {
        method: "POST",
        headers: { ...auth, "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ fullName: chosen.dataset.fullname, payType: mode }),
        cache: "no-store",
        credentials: "same-origin",
      });
      data = await response.json().catch(() => null);
      if (!response.ok || !data || !data.payUrl) {
        failure = (data && data.error && data.error.message) || ("HTTP " + response.status);
      }
    } catch (e) {
      failure = "网络错误 Network error";
    }
    if (mine !== request) return;  // another choice was made meanwhile
    $("working").hidden = true;
    if (failure) {
      error("无法发起支付 Could not start the payment: " + failure);
      poll(true);
      return;
    }
    const zh = chosen.dataset.zh, en = chosen.dataset.en;
    if (mode === "pc" && data.qrCode) {
      const img = $("qr-image");
      img.src = data.qrCode;
      img.dataset.payUrl = data.payUrl;
      img.dataset.provider = chosen.dataset.kind;
      $("qr-hint").textContent = "请使用" + zh + "扫码付款 Scan with " + en + " to pay";
      const link = $("qr-link");
      link.href = data.payUrl;
      link.hidden = !/^https?:\/\//i.test(data.payUrl);
      $("qr-view").hidden = false;
    } else {
      const link = $("pay-link");
      link.href = data.payUrl;
      link.textContent = "前往" + zh + "付款 Pay with " + en;
      link.className = "button choice-" + chosen.dataset.index;
      $("mobile-view").hidden = false;
    }
  }

  document.querySelectorAll("button.choice").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll("button.choice").forEach((b) => b.setAttribute("aria-pressed", "false"));
      button.setAttribute("aria-pressed", "true");
      chosen = button;
      prepare();
    });
  });

  $("mode-toggle").addEventListener("click", (event) => {
    event.preventDefault();
    mode = mode === "pc" ? "mobile" : "pc";
    showMode();
    prepare();
  });

  let timer = null;
  let etag = null;  // of the last status: an unchanged one comes back as a bodiless 304
  async function check() {
    timer = null;
    if (done) return;
    if (!document.hidden) {
      try {
        const headers = etag ? { ...auth, "If-None-Match": etag } : auth;
        const response = await fetch(base + "/status", {
          headers, cache: "no-store", credentials: "same-origin",
        });
        if (response.status === 200) {
          const data = await response.json();
          etag = response.headers.get("ETag");
          render(data.status, data.payTime);
        }
      } catch (e) {
        // offline for a moment: try again on the next tick
      }
    }
    poll();
  }
  function poll(now) {
    if (done) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(check, now ? 0 : POLL_MS);
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(true); });

  showMode();
  const shownTime = $("pay-time").textContent.trim();
  if (shownTime) $("pay-time").textContent = new Date(shownTime).toLocaleString();
  if (body.dataset.status !== "pending") {
    done = true;
  } else {
    poll();
  }
})();
