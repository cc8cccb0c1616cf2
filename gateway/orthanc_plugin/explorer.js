// xray-gateway: integrity banners in Orthanc Explorer (added by the xray-gateway plugin).
// On the study, series and instance pages, asks /xray/<level>/<id>/integrity and shows
// the answer above the page: a red refusal, an amber warning or a green confirmation.
(function () {
  var COLOURS = {
    refused: ['#b00020', '#ffffff'],
    warning: ['#f5b400', '#1b1b1b'],
    ok: ['#1e7b34', '#ffffff']
  };

  function tone(status) {
    if (status === 'tampered' || status === 'missing') { return 'refused'; }
    if (status === 'intact') { return 'ok'; }
    return 'warning';
  }

  function banner(page, level, uuid, answer) {
    var colours = COLOURS[tone(answer.status)];
    var box = $('<div>', { id: 'xray-integrity-banner', 'class': 'xray-integrity xray-' + answer.status })
      .attr('data-xray-status', answer.status)
      .css({ background: colours[0], color: colours[1], padding: '12px 16px', margin: '0 0 12px 0',
             'border-radius': '6px', 'font-size': '15px', 'line-height': '1.4', 'text-shadow': 'none' });
    $('<div>', { text: 'xray-gateway integrity check: ' + answer.headline })
      .css({ 'font-weight': 'bold', 'font-size': '17px' }).appendTo(box);
    $('<div>', { text: answer.explanation }).appendTo(box);
    if (answer.ledger) {
      $('<div>', { text: 'Ledger: ' + answer.ledger }).css({ 'font-size': '13px', opacity: 0.9 }).appendTo(box);
    }
    var problems = $.grep(answer.instances || [], function (item) { return item.status !== 'intact'; });
    if (problems.length > 0) {
      var list = $('<ul>').css({ margin: '6px 0 0 18px', padding: 0 });
      $.each(problems.slice(0, 20), function (i, item) {
        var label = 'Instance ' + (item.instance_number || item.id) + ': ' + item.headline;
        $('<li>').append($('<a>', { href: '#instance?uuid=' + item.id, text: label })
          .css({ color: colours[1] })).appendTo(list);
      });
      if (problems.length > 20) { $('<li>', { text: '… and ' + (problems.length - 20) + ' more' }).appendTo(list); }
      list.appendTo(box);
    }
    $(page + ' #xray-integrity-banner').remove();
    $(page).find('div[data-role="content"]').first().prepend(box);
  }

  function check(page, level) {
    $(page).live('pagebeforeshow', function () {
      if (!$.mobile.pageData || !$.mobile.pageData.uuid) { return; }
      var uuid = $.mobile.pageData.uuid;
      $(page + ' #xray-integrity-banner').remove();
      $.ajax({
        url: '../xray/' + level + '/' + uuid + '/integrity',
        dataType: 'json',
        cache: false,
        success: function (answer) { banner(page, level, uuid, answer); },
        error: function () {
          banner(page, level, uuid, {
            status: 'unverifiable',
            headline: 'Warning: the integrity of this ' + level.replace(/s$/, '') + ' could not be checked.',
            explanation: 'The xray-gateway plugin did not answer. Ask the PACS administrator.'
          });
        }
      });
    });
  }

  check('#study', 'studies');
  check('#series', 'series');
  check('#instance', 'instances');
})();
