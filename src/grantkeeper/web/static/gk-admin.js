// Progressive enhancement only: every page works without it.
// "Copy" buttons next to read-only fields (the callback URL, connect links, secrets).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var input = document.getElementById(button.getAttribute("data-copy"));
    if (!input || !navigator.clipboard) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(input.value).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      }, function () { input.select(); });
    });
  });
  var errors = document.getElementById("form-errors");
  if (errors) errors.focus();
});
