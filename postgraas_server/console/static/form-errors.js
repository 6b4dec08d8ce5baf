// The server's 4xx answers on a form: each reason next to the field it names (errors: {field:
// reason}), the message above the form. Fields are named as the API names them.

import { el } from "./dom.js";

export function clearErrors(form, message) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    const described = (input.getAttribute("aria-describedby") || "")
      .split(" ")
      .filter((id) => id && !id.endsWith("-error"));
    if (described.length) input.setAttribute("aria-describedby", described.join(" "));
    else input.removeAttribute("aria-describedby");
  }
  message.textContent = "";
}

// Shows error (an ApiError) on form; returns whether a field was named, and focuses the first one.
export function showErrors(form, message, error) {
  clearErrors(form, message);
  message.textContent = error.message;
  let first = null;
  for (const [field, reason] of Object.entries(error.fields)) {
    const input = form.elements.namedItem(field);
    if (!(input instanceof HTMLElement) || input.closest("[hidden]")) continue;
    const id = `${input.id}-error`;
    input.closest(".field").append(el("p", { id, className: "field-error", text: reason }));
    input.setAttribute("aria-invalid", "true");
    const described = input.getAttribute("aria-describedby");
    input.setAttribute("aria-describedby", described ? `${described} ${id}` : id);
    first = first || input;
  }
  if (first) first.focus();
  return first !== null;
}
