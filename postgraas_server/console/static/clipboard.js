// Copy buttons: the Clipboard API where the browser grants it, else the selection and the older
// copy command (http pages other than localhost have no Clipboard API).

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      /* refused: try the fallback */
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch {
    copied = false;
  }
  area.remove();
  return copied;
}

// Each button[data-copy] copies the text of the element its value names; status tells the result.
export function wireCopyButtons(container, status) {
  for (const button of container.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const copied = await copyText(source.textContent);
      if (copied) {
        status.textContent = "Copied.";
      } else {
        // Selected for the person to copy with the keyboard.
        window.getSelection().selectAllChildren(source);
        status.textContent = "The browser refused to copy: the text is selected, copy it with Ctrl+C.";
      }
    });
  }
}
