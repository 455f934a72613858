"use strict";
// Signal form: the metric settings (aggregation, period, value field) apply to metric signals
// only, so they are shown only while the type is "metric". Hidden inputs are also disabled:
// a value left in them is then not posted, and the server does not refuse an event signal
// for a setting the user cannot see. The server checks everything again either way.
(function () {
  const METRIC_ONLY = ".bigmind-metric-only, .field-aggregation, .field-period, .field-value_field";

  function init() {
    const type = document.getElementById("id_type");
    if (!type) {
      return;
    }
    const parts = document.querySelectorAll(METRIC_ONLY);
    function update() {
      const metric = type.value === "metric";
      parts.forEach(function (part) {
        part.style.display = metric ? "" : "none";
        part.querySelectorAll("input, select, textarea").forEach(function (input) {
          input.disabled = !metric;
        });
      });
    }
    type.addEventListener("change", update);
    update();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
