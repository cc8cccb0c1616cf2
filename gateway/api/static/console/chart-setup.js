// Draws the overview's ingest/anchor chart with Chart.js from the JSON the page embeds.
document.addEventListener("DOMContentLoaded", function () {
  var data = document.getElementById("activity-data");
  var canvas = document.getElementById("activity-chart");
  if (!data || !canvas || typeof Chart === "undefined") return;
  var series = JSON.parse(data.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: series.labels,
      datasets: [
        { label: "received", data: series.received, backgroundColor: "#0969da" },
        { label: "anchored", data: series.anchored, backgroundColor: "#1a7f37" }
      ]
    },
    options: { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
  });
});
