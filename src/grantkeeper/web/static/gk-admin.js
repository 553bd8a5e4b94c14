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

  // narrow screens show table rows as cards: each cell gets its column's name as a label
  document.querySelectorAll("table").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    if (!heads.length) return;
    table.querySelectorAll("tbody tr").forEach(function (row) {
      Array.prototype.forEach.call(row.children, function (cell, i) {
        if (heads[i] && !cell.hasAttribute("data-label")) {
          cell.setAttribute("data-label", heads[i].textContent.trim());
        }
      });
    });
  });

  // the new integration form: choosing a provider fills in its default scopes, unless the
  // field holds something typed by hand
  var provider = document.getElementById("f-provider");
  var scopes = document.getElementById("f-scopes");
  if (provider && scopes) {
    var filled = scopes.value;
    provider.addEventListener("change", function () {
      var option = provider.options[provider.selectedIndex];
      var defaults = option ? option.getAttribute("data-scopes") || "" : "";
      if (scopes.value === filled) {
        scopes.value = defaults;
        filled = defaults;
      }
    });
  }
});
