// Show the failure note after a refused login (the server redirects to /login?failed=1).
if (new URLSearchParams(location.search).has("failed")) {
  document.getElementById("failed").hidden = false;
}
